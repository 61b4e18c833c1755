"""Warm-up SFT: completion loss on (document, question, reasoning + answer) triplets.

The prompt is the QwenLong chat prompt of :func:`longrl.data.prompt.chat_prompt_ids`; the target is
the sample's ``metadata["response"]`` when present, else
``"<think>\\n{reasoning}\\n</think>\\n\\nTherefore, the answer is {answer}."`` followed by EOS.
The loss is the token-mean negative log-likelihood of the target tokens over the whole optimizer batch
(exact across token-budget micro-batches and processes), computed by the chunked kernel of
:mod:`longrl.train.logprobs` so [T, V] logits never exist. With ``prompt_loss_weight`` w > 0 the
prompt tokens (document and question) join the loss with weight w: the objective is the weighted
token mean ``(sum_target nll + w * sum_prompt nll) / (n_target + w * n_prompt)``, i.e. completion SFT
plus continued pretraining on the documents (a dense signal for a model trained from scratch).

``longrl sft --config FILE [key=value ...]`` trains ``model.path`` on ``sft.sources`` (or
``data.sources``) and writes ``<output_dir>/sft/final``; re-running resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from longrl.config import ConfigError, LoggingConfig, load_config
from longrl.data.prompt import chat_prompt_ids
from longrl.data.readers import read_sources
from longrl.data.records import DocQASample
from longrl.locations import check_model_config
from longrl.models import build_tiny_policy, load_policy, save_pretrained_dir
from longrl.train.checkpoint import announce_resume, load_checkpoint, open_run, save_checkpoint
from longrl.train.group_forward import unwrap_peft
from longrl.train.logprobs import token_logprobs_entropy
from longrl.train.optim import (
    build_optimizer,
    build_scheduler,
    pack_by_token_budget,
    seed_everything,
    shard,
    synced_update,
)
from longrl.train.runtime import (
    default_accelerator,
    lockstep_batches,
    save_final,
    shard_policy,
    sharded_forward,
)
from longrl.train.telemetry import Telemetry

SFT_TEMPLATE = "<think>\n{reasoning}\n</think>\n\nTherefore, the answer is {answer}."
"""Assistant target for samples without a full ``metadata["response"]``."""


@dataclass
class SFTExample:
    prompt_ids: list[int]
    target_ids: list[int]
    """Completion tokens, EOS included; the only tokens in the loss."""

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


@dataclass
class SFTResult:
    final_dir: Path
    steps: int
    train_loss: float
    heldout_loss: float
    skipped_long: int
    already_complete: bool = False
    """The run directory held a finished run: nothing was trained or rewritten."""


def sft_target(sample: DocQASample) -> str:
    """The assistant response trained on for ``sample``."""
    if sample.metadata.get("response"):
        return str(sample.metadata["response"])
    reasoning = str(sample.metadata.get("reasoning", "")).strip()
    return SFT_TEMPLATE.format(reasoning=reasoning, answer=sample.answer)


def build_examples(tokenizer, samples: list[DocQASample], max_seq_tokens: int = 0) -> tuple[list[SFTExample], int]:
    """Tokenised examples and the number skipped for exceeding ``max_seq_tokens`` (0 = no limit)."""
    out, skipped = [], 0
    for s in samples:
        target = tokenizer.encode(sft_target(s), add_special_tokens=False) + [tokenizer.eos_token_id]
        ex = SFTExample(chat_prompt_ids(tokenizer, s), target)
        if max_seq_tokens and ex.n_tokens > max_seq_tokens:
            skipped += 1
            continue
        out.append(ex)
    return out, skipped


def split_heldout(samples: list[DocQASample], fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, heldout) split; heldout gets ``round(fraction * n)`` samples."""
    order = list(range(len(samples)))
    random.Random(f"sft-heldout:{seed}").shuffle(order)
    n_held = round(fraction * len(samples))
    held = set(order[:n_held])
    return [s for i, s in enumerate(samples) if i not in held], [samples[i] for i in sorted(held)]


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Example indices of optimizer step ``step``: epoch-wise seeded permutations, stateless in ``step``."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        perm = list(range(n))
        random.Random(f"sft-order:{seed}:{epoch}").shuffle(perm)
        out.append(perm[pos])
    return out


def target_logprobs(model, examples: list[SFTExample], chunk: int,
                    with_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs of every example's next tokens in one right-padded forward.

    Returns ``(logps_BT, target_mask_BT, prompt_mask_BT)``: the masks mark positions predicting a target
    token and (with ``with_prompt``; else all False) a prompt token after the first.
    """
    base = unwrap_peft(model)
    head = base.get_output_embeddings()
    device = head.weight.device
    width = max(e.n_tokens for e in examples)
    ids_BT = torch.zeros(len(examples), width, dtype=torch.long, device=device)
    attn_BT = torch.zeros_like(ids_BT)
    targets_BT = torch.full_like(ids_BT, -100)
    for b, e in enumerate(examples):
        seq = e.prompt_ids + e.target_ids
        p = len(e.prompt_ids)
        ids_BT[b, :len(seq)] = torch.tensor(seq, device=device)
        attn_BT[b, :len(seq)] = 1
        targets_BT[b, p - 1:len(seq) - 1] = torch.tensor(e.target_ids, device=device)
        if with_prompt:
            targets_BT[b, :p - 1] = torch.tensor(e.prompt_ids[1:], device=device)
    is_prompt_BT = torch.zeros_like(targets_BT, dtype=torch.bool)
    if with_prompt:
        for b, e in enumerate(examples):
            is_prompt_BT[b, :len(e.prompt_ids) - 1] = True
    hidden_BTH = base.get_decoder()(input_ids=ids_BT, attention_mask=attn_BT, use_cache=False).last_hidden_state
    logps_BT, _ = token_logprobs_entropy(hidden_BTH, head.weight, targets_BT, chunk=chunk, with_entropy=False)
    return logps_BT, (targets_BT >= 0) & ~is_prompt_BT, is_prompt_BT


def loss_weight(examples: list[SFTExample], prompt_loss_weight: float) -> float:
    """The objective's denominator: target tokens + ``prompt_loss_weight`` x predicted prompt tokens."""
    n_prompt = sum(len(e.prompt_ids) - 1 for e in examples) if prompt_loss_weight > 0 else 0
    return sum(len(e.target_ids) for e in examples) + prompt_loss_weight * n_prompt


def nll_sum(model, examples: list[SFTExample], budget: int, chunk: int, scale: float, backward: bool,
            passes: list[tuple[list[SFTExample], float]] | None = None) -> float:
    """Sum of target-token NLL over ``examples`` (completion-only loss); see :func:`nll_sums`."""
    return nll_sums(model, examples, budget, chunk, scale, backward, passes=passes)[0]


def micro_batches(examples: list[SFTExample], budget: int) -> list[list[SFTExample]]:
    """``examples`` packed in order into micro-batches of at most ``budget`` tokens."""
    return [[examples[i] for i in idx] for idx in pack_by_token_budget([e.n_tokens for e in examples], budget)]


def nll_sums(model, examples: list[SFTExample], budget: int, chunk: int, scale: float, backward: bool,
             prompt_loss_weight: float = 0.0,
             passes: list[tuple[list[SFTExample], float]] | None = None) -> tuple[float, float]:
    """Sums of target-token NLL and of prompt-token NLL (0 unless ``prompt_loss_weight`` > 0) over
    ``examples``, in token-budget micro-batches.

    With ``backward``, each micro-batch's ``(target nll + prompt_loss_weight * prompt nll) / scale`` is
    back-propagated (``scale`` = :func:`loss_weight` of the global batch, so the accumulated gradient
    is that of the exact weighted token-mean). ``passes`` ((micro-batch, weight) pairs from
    :func:`~longrl.train.runtime.lockstep_batches`; weight 0 = a pass that only keeps sharded processes
    in step) replaces the packing of ``examples``.
    """
    total, total_prompt = 0.0, 0.0
    for mb, weight in passes if passes is not None else [(mb, 1.0) for mb in micro_batches(examples, budget)]:
        logps_BT, mask_BT, prompt_BT = sharded_forward(model, target_logprobs, mb, chunk,
                                                       with_prompt=prompt_loss_weight > 0)
        nll = -torch.where(mask_BT, logps_BT, 0.0).sum() * weight
        nll_prompt = -torch.where(prompt_BT, logps_BT, 0.0).sum() * weight
        if backward:
            ((nll + prompt_loss_weight * nll_prompt) / scale).backward()
        total += float(nll.detach())
        total_prompt += float(nll_prompt.detach())
    return total, total_prompt


def heldout_loss(model, examples: list[SFTExample], budget: int, chunk: int, accelerator) -> float:
    """Token-mean NLL over ``examples`` (sharded over processes)."""
    if not examples:
        return float("nan")
    world = accelerator.num_processes
    passes = lockstep_batches(model, accelerator, lambda r: micro_batches(shard(examples, r, world), budget))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        local = nll_sum(model, [], budget, chunk, 1.0, backward=False, passes=passes)
    model.train(was_training)
    total = accelerator.reduce(torch.tensor([local], dtype=torch.float64), reduction="sum")
    return float(total[0]) / sum(len(e.target_ids) for e in examples)


def _sft_step(model, params, optimizer, scheduler, accelerator, batch: list[SFTExample], cfg) -> dict[str, float]:
    """One optimizer step on ``batch`` (this process trains its round-robin share)."""
    w = cfg.prompt_loss_weight
    n_targets = sum(len(e.target_ids) for e in batch)
    n_prompt = sum(len(e.prompt_ids) - 1 for e in batch)
    world = accelerator.num_processes
    passes = lockstep_batches(model, accelerator,
                              lambda r: micro_batches(shard(batch, r, world), cfg.micro_token_budget))
    local = nll_sums(model, [], cfg.micro_token_budget, cfg.loss_chunk, n_targets + w * n_prompt, backward=True,
                     prompt_loss_weight=w, passes=passes)
    total, total_prompt = (float(x) for x in accelerator.reduce(torch.tensor(local, dtype=torch.float64),
                                                                 reduction="sum"))
    result = synced_update(params, optimizer, accelerator, cfg.optim.grad_clip, local_loss_ok=bool(
        torch.isfinite(torch.tensor(local)).all()))
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    out = {"sft/loss": total / n_targets, "sft/grad_norm": result.grad_norm, "sft/lr": lr,
           "sft/target_tokens": n_targets, "sft/skipped_update": float(not result.applied)}
    if w > 0:
        out["sft/prompt_loss"] = total_prompt / n_prompt
    return out


def train_sft(model, tokenizer, samples: list[DocQASample], cfg, *, run_dir: str | Path, seed: int = 0,
              heldout: list[DocQASample] | None = None, logging_cfg=None, save_every: int = 0,
              keep_checkpoints: int = 2, accelerator=None, run_config: dict | None = None,
              allow_config_change: bool = False, source_of=None) -> SFTResult:
    """Warm-up SFT of ``model`` in place, as ``cfg`` (an :class:`~longrl.config.SFTConfig`) says.

    ``heldout`` None splits ``cfg.heldout_fraction`` off ``samples``. Checkpoints go to
    ``run_dir/checkpoints`` every ``save_every`` steps and at the last step, and are resumed from (with
    the RL loop's rules: announced; ``run_config``, default the SFT section and seed, compared with the
    saved one, a change that alters training refused unless ``allow_config_change``; a finished run
    reported and left untouched). The final model + tokenizer go to ``run_dir/final``. Every process
    must call this with the same arguments.
    """
    from dataclasses import asdict


    accelerator = accelerator or default_accelerator()
    run_dir = Path(run_dir)
    main = accelerator.is_main_process
    ckpt = open_run(run_dir, run_config or {"sft": asdict(cfg), "seed": seed}, allow_change=allow_config_change,
                    source_of=source_of, main=main)
    seed_everything(seed)
    if heldout is None:
        samples, heldout = split_heldout(samples, cfg.heldout_fraction, seed)
    train, skipped = build_examples(tokenizer, samples, cfg.max_seq_tokens)
    held, _ = build_examples(tokenizer, heldout, cfg.max_seq_tokens)
    if not train:
        raise ValueError(f"no SFT examples left ({skipped} over sft.max_seq_tokens={cfg.max_seq_tokens})")
    model = shard_policy(model, accelerator)  # FSDP2 when the accelerate config says so (docs/scaling.md)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay, tuple(o.betas))
    scheduler = build_scheduler(optimizer, o.warmup_steps, cfg.steps, o.schedule)
    start, state = 0, {}
    if ckpt is not None:
        trainer = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator)
        start, state = int(trainer["step"]), trainer["state"]
        announce_resume(run_dir, start, ckpt, main)
    metrics: dict[str, float] = dict(state.get("last_metrics", {}))
    held_loss = float(state.get("heldout_loss", float("nan")))
    if start >= cfg.steps and (run_dir / "final").is_dir():
        if main:
            print(f"{run_dir}: already complete at step {start}; nothing to do", file=sys.stderr)
        return SFTResult(run_dir / "final", cfg.steps, metrics.get("sft/loss", float("nan")), held_loss, skipped,
                         already_complete=True)
    tel = _telemetry(Telemetry, run_dir, cfg.steps, start, logging_cfg, accelerator)
    model.train()
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            batch = [train[i] for i in batch_indices(step, cfg.batch_size, len(train), seed)]
            metrics = _sft_step(model, params, optimizer, scheduler, accelerator, batch, cfg)
            metrics["perf/step_time_s"] = time.perf_counter() - t0
            metrics["perf/tokens_per_s"] = sum(e.n_tokens for e in batch) / metrics["perf/step_time_s"]
            if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                held_loss = heldout_loss(model, held, cfg.micro_token_budget, cfg.loss_chunk, accelerator)
                metrics["sft/heldout_loss"] = held_loss
            tel.log(step + 1, metrics)
            if (save_every and (step + 1) % save_every == 0) or step + 1 == cfg.steps:
                save_checkpoint(run_dir / "checkpoints", step + 1, model=model, optimizer=optimizer,
                                scheduler=scheduler, accelerator=accelerator, keep=keep_checkpoints,
                                state={"last_metrics": metrics, "heldout_loss": held_loss})
    finally:
        tel.close()
    final = save_final(model, tokenizer, run_dir / "final", accelerator)
    return SFTResult(final, cfg.steps, metrics.get("sft/loss", float("nan")), held_loss, skipped)


def _telemetry(cls, run_dir, total, start, logging_cfg, accelerator):
    lc = logging_cfg or LoggingConfig()
    return cls(run_dir, total_steps=total, start_step=start, description=run_dir.name, jsonl=lc.jsonl,
               tensorboard=lc.tensorboard, wandb_project=lc.wandb_project, progress=lc.progress,
               enabled=accelerator.is_main_process)


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides")
    parser.add_argument("--init-tiny", action="store_true",
                        help="when model.path does not exist, build a tiny Qwen2 model + tokenizer there, "
                             "trained on the SFT texts (CPU demo / smoke runs)")
    parser.add_argument("--tiny-hidden", type=int, default=64, help="hidden size for --init-tiny")
    parser.add_argument("--tiny-layers", type=int, default=2, help="layers for --init-tiny")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume a run whose config changed in a way that alters training (prints what changed)")


def init_tiny_model(path: str, samples: list[DocQASample], hidden: int, layers: int) -> None:
    """Save at ``path`` the from-scratch policy (:func:`longrl.models.build_tiny_policy`) whose tokenizer is
    trained on ``samples``' texts."""
    texts = [t for s in samples for t in (s.document, s.question, sft_target(s))]
    model, tok = build_tiny_policy(texts, hidden_size=hidden, num_layers=layers)
    save_pretrained_dir(model, tok, path)


SFT_CONFIG_SECTIONS = ("seed", "output_dir", "save_every", "keep_checkpoints", "model", "data", "sft", "logging")
"""The config sections `longrl sft` depends on: saved with the run, compared on resume (rl.* may change)."""


def sft_run_config(cfg) -> dict:
    d = cfg.to_dict()
    return {k: d[k] for k in SFT_CONFIG_SECTIONS}


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    check_model_config(cfg, path=not (args.init_tiny and cfg.model.path and not Path(cfg.model.path).exists()))
    sources = cfg.sft.sources or cfg.data.sources
    if not sources:
        raise ConfigError("sft.sources", "no SFT data: set sft.sources or data.sources", args.config)
    samples = read_sources(sources, cfg.data.on_error)
    if args.init_tiny and not Path(cfg.model.path).exists():
        init_tiny_model(cfg.model.path, samples, args.tiny_hidden, args.tiny_layers)
    accelerator = default_accelerator()
    model, tokenizer = load_policy(cfg.model)
    model.to(accelerator.device)
    result = train_sft(model, tokenizer, samples, cfg.sft, run_dir=Path(cfg.output_dir) / "sft", seed=cfg.seed,
                       logging_cfg=cfg.logging, save_every=cfg.save_every, keep_checkpoints=cfg.keep_checkpoints,
                       accelerator=accelerator, run_config=sft_run_config(cfg), allow_config_change=args.allow_config_change,
                       source_of=cfg.source_of)
    if accelerator.is_main_process:
        head = f"SFT already complete at step {result.steps}" if result.already_complete else "SFT done"
        print(f"{head}: {result.steps} steps, train loss {result.train_loss:.4f}, "
              f"held-out loss {result.heldout_loss:.4f}, skipped {result.skipped_long} over-long; "
              f"model in {result.final_dir}")
    return 0
