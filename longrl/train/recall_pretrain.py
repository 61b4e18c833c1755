"""Recall pretraining: teach a from-scratch policy to look facts up in a document before warm-up SFT.

Copy pretraining (:mod:`longrl.train.copy_pretrain`) gives the model an induction circuit, but one that
matches a single token: asked where Kalor lives, it writes "Kalor lives in" and then copies the word
after *some* "lives in" in the document. Finding the right fact means matching the name two or three
tokens back. A pretrained LLM brings that skill from its pretraining corpus; a 0.6M-parameter model
built from scratch needs a corpus that exercises it densely.

The task: a synthetic document (:func:`longrl.data.synth.generate`, split ``"recall"``, so no document is
shared with SFT, RL or held-out data), a blank line, then every sentence of the document again in a
shuffled order, with the loss on the restatement only. The subject and relation of a restated
sentence are not predictable (the order is random), but its value is, from the document, and only by
matching the whole "<name> <relation>" prefix: about twenty dense lookup targets per document where
a DocQA example has one. On the demo model, 400 steps on 64-token documents reach 98.7% held-out value
accuracy; RL after SFT then takes lookup on 256-token documents from 20% to 95% (docs/demo.md; with
copy pretraining alone RL did not move held-out accuracy).

:func:`recall_row` is deterministic given its ``random.Random``; :func:`recall_pretrain` trains in place
and returns the held-out value accuracy (the last token of each restated sentence, greedy).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch

from longrl.data.synth import generate
from longrl.data.tokens import token_counter
from longrl.train.copy_pretrain import pretrain_loop

_SENTENCE = re.compile(r"[^.\n]+\.")


def fact_sentences(document: str) -> list[str]:
    """The sentences of a synthetic document (each ends with a full stop), stripped."""
    return [m.group(0).strip() for m in _SENTENCE.finditer(document)]


def recall_row(tokenizer, document: str, rng: random.Random) -> tuple[list[int], list[int], list[int]]:
    """(ids, labels, value positions) for ``document + "\\n\\n" + its sentences shuffled``.

    ``labels`` is ``-100`` on the document and the restated tokens elsewhere; value positions index
    the last token before each restated full stop (the fact's value, or its last digit).
    """
    sentences = fact_sentences(document)
    if not sentences:
        raise ValueError(f"recall pretraining: no sentences in document {document[:80]!r}")
    rng.shuffle(sentences)
    head = tokenizer.encode(document + "\n\n", add_special_tokens=False)
    ids, values = list(head), []
    for sentence in sentences:
        piece = tokenizer.encode(" " + sentence, add_special_tokens=False)
        ids += piece
        values.append(len(ids) - 2)                 # the token before the final "."
    labels = [-100] * len(head) + ids[len(head):]
    return ids, labels, values


def recall_batch(rows: list[tuple[list[int], list[int], list[int]]],
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (ids, labels, attention_mask) tensors for :func:`recall_row` rows."""
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (row_ids, row_labels, _) in enumerate(rows):
        ids[r, :len(row_ids)] = torch.tensor(row_ids)
        labels[r, :len(row_labels)] = torch.tensor(row_labels)
        mask[r, :len(row_ids)] = 1
    return ids, labels, mask


@torch.no_grad()
def recall_eval(model, rows, pad_id: int, batch_size: int = 16) -> tuple[float, float]:
    """(restatement loss, greedy accuracy on the value tokens) over ``rows``."""
    total_loss, n_tokens, hits, n_values = 0.0, 0, 0, 0
    model.eval()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, labels, mask = recall_batch(chunk, pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        pred, target = logits[:, :-1], labels[:, 1:]
        keep = target != -100
        total_loss += torch.nn.functional.cross_entropy(pred[keep], target[keep], reduction="sum").item()
        n_tokens += int(keep.sum())
        best = pred.argmax(-1)
        for r, (row_ids, _, values) in enumerate(chunk):
            hits += sum(int(best[r, v - 1]) == row_ids[v] for v in values)
            n_values += len(values)
    return total_loss / max(1, n_tokens), hits / max(1, n_values)


def recall_pretrain(model, tokenizer, cfg, *, families, run_dir: str | Path, seed: int = 0,
                    progress: bool = True) -> dict[str, Any]:
    """Train ``model`` in place on document recall as ``cfg`` (a ``RecallPretrainConfig``) describes.

    ``cfg.documents`` synthetic documents of ``cfg.target_tokens`` policy tokens (question ``families``
    shape their facts) are drawn with replacement, ``cfg.batch_size`` per step; 64 more are held out.
    Returns ``{"recall/loss", "recall/value_acc", "recall/steps", "recall/time_s"}`` measured on the
    held-out documents after training.
    """
    docs = [s.document for s in generate(cfg.documents + 64, cfg.target_tokens, seed, families, "recall",
                                         token_counter(tokenizer))]
    train_docs, held_docs = docs[:cfg.documents], docs[cfg.documents:]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    held_rng = random.Random(f"longrl-recall-heldout:{seed}")
    held = [recall_row(tokenizer, d, held_rng) for d in held_docs]
    rng = random.Random(f"longrl-recall:{seed}")

    def make_batch():
        return recall_batch([recall_row(tokenizer, rng.choice(train_docs), rng) for _ in range(cfg.batch_size)], pad)

    seconds = pretrain_loop(model, make_batch, steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                            run_dir=run_dir, description="recall pretrain", metric="recall/loss",
                            config_key="pipeline.tiny.recall_pretrain", progress=progress)
    loss, acc = recall_eval(model, held, pad)
    return {"recall/loss": loss, "recall/value_acc": acc, "recall/steps": cfg.steps, "recall/time_s": seconds}
