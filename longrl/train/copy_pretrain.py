"""Copy pretraining: give a from-scratch policy an induction (copy) circuit before warm-up SFT.

Answering a DocQA question means finding the asked entity in the document and copying what follows
it. A transformer does that with an *induction* circuit (a previous-token head feeding a head that
attends to "the token after the earlier occurrence of the current token"). A randomly initialised
model does not learn it from DocQA SFT within a CPU budget: the demo's 1M-parameter model wrote the
right format after 1000 SFT steps but answered lookups with values absent from the document.

The remedy here is the standard synthetic copying task: a random token span, a random gap, the span
again, with the loss on the repeat only. Because the gap varies, a fixed positional offset cannot
solve it; only content-based matching can. On the demo model (2 layers, hidden 128) the copy loss
falls from ~ln(V) to near 0 after ~500-600 steps of 16 sequences (under a minute on one core);
see docs/demo.md for the measurements with and without it (the demo's SFT lookup accuracy went from
6% to ~40% on 128-token documents). ``row_vocab`` draws each row from a few tokens, so tokens repeat
inside a span and only a match on several preceding tokens predicts the next one (n-gram copying).

:func:`copy_batch` is deterministic given its generator; :func:`copy_pretrain` trains in place and
returns the final held-out copy loss and accuracy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from longrl.train.optim import build_optimizer, build_scheduler
from longrl.train.telemetry import Telemetry


def copy_batch(gen: torch.Generator, token_ids: torch.Tensor, batch_size: int, min_span: int, max_span: int,
               max_gap: int, bos_id: int, pad_id: int, row_vocab: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[bos, span, gap, span, pad...]`` rows and labels (``-100`` except the repeated span).

    ``span`` has a length drawn from [min_span, max_span] and the gap from [0, max_gap]; tokens are
    drawn uniformly from ``token_ids``, or, with ``row_vocab`` > 0, from ``row_vocab`` of them drawn per
    row: tokens then recur within a span, so the next token is fixed only by the preceding n-gram
    and the model has to match several tokens back, as it must to find "<name> lives in" in a
    document. Rows are right-padded to ``1 + 2 * max_span + max_gap``.
    """
    width = 1 + 2 * max_span + max_gap
    ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
    labels = torch.full((batch_size, width), -100, dtype=torch.long)
    for row in range(batch_size):
        n = int(torch.randint(min_span, max_span + 1, (1,), generator=gen))
        gap = int(torch.randint(0, max_gap + 1, (1,), generator=gen))
        pool = token_ids
        if row_vocab:
            pool = token_ids[torch.randperm(len(token_ids), generator=gen)[:row_vocab]]
        span = pool[torch.randint(0, len(pool), (n,), generator=gen)]
        filler = pool[torch.randint(0, len(pool), (gap,), generator=gen)]
        seq = torch.cat([torch.tensor([bos_id]), span, filler, span])
        ids[row, :len(seq)] = seq
        labels[row, 1 + n + gap:len(seq)] = span
    return ids, labels


@torch.no_grad()
def copy_eval(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean loss, next-token accuracy) on the labelled positions of a copy batch."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    loss = torch.nn.functional.cross_entropy(logits[mask], target[mask]).item()
    acc = (logits.argmax(-1)[mask] == target[mask]).float().mean().item()
    return loss, acc


def copy_token_ids(tokenizer) -> torch.Tensor:
    """Every non-special token id of ``tokenizer``: what the copying task draws from."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special], dtype=torch.long)


def pretrain_loop(model, make_batch, *, steps: int, lr: float, warmup_steps: int, run_dir: str | Path,
                  description: str, metric: str, config_key: str, progress: bool = True) -> float:
    """Train ``model`` in place for ``steps`` AdamW steps on ``make_batch() -> (ids, labels, attention_mask)``.

    Per-step loss goes to ``run_dir/metrics.jsonl`` as ``metric``; a non-finite loss raises naming
    ``config_key``. Returns the wall time in seconds.
    """
    optimizer = build_optimizer(model, lr, weight_decay=0.0, betas=(0.9, 0.98))
    scheduler = build_scheduler(optimizer, warmup_steps, steps, "constant")
    tele = Telemetry(run_dir, total_steps=steps, description=description, tensorboard=False, progress=progress)
    t0 = time.monotonic()
    model.train()
    try:
        for step in range(1, steps + 1):
            ids, labels, mask = make_batch()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"{description}: non-finite loss at step {step}; lower {config_key}.lr "
                                         f"(now {lr})")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tele.log(step, {metric: value})
    finally:
        tele.close()
    model.eval()
    return time.monotonic() - t0


def copy_pretrain(model, tokenizer, cfg, *, run_dir: str | Path, seed: int = 0,
                  progress: bool = True) -> dict[str, Any]:
    """Train ``model`` in place on the copying task ``cfg`` (a ``CopyPretrainConfig``) describes.

    Tokens are :func:`copy_token_ids`. Per-step loss goes to ``run_dir/metrics.jsonl``. Returns
    ``{"copy/loss", "copy/acc", "copy/steps", "copy/time_s"}``, loss and accuracy measured on a fixed
    held-out batch of 64 sequences after training.
    """
    token_ids = copy_token_ids(tokenizer)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    shape = dict(min_span=cfg.min_span, max_span=cfg.max_span, max_gap=cfg.max_gap, bos_id=bos, pad_id=pad,
                 row_vocab=cfg.row_vocab)
    held = copy_batch(torch.Generator().manual_seed(seed + 1_000_003), token_ids, 64, **shape)
    gen = torch.Generator().manual_seed(seed)

    def make_batch():
        ids, labels = copy_batch(gen, token_ids, cfg.batch_size, **shape)
        return ids, labels, None

    seconds = pretrain_loop(model, make_batch, steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                            run_dir=run_dir, description="copy pretrain", metric="copy/loss",
                            config_key="pipeline.tiny.copy_pretrain", progress=progress)
    loss, acc = copy_eval(model, *held)
    return {"copy/loss": loss, "copy/acc": acc, "copy/steps": cfg.steps, "copy/time_s": seconds}
