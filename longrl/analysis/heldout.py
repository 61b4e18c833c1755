"""Held-out accuracy per set (document length) and question family, from batched in-process generation.

The pipeline calls :func:`evaluate_sets` after every stage: the prompts of all sets are sorted by
length and generated in left-padded batches with ``model.generate`` (one forward per token for a whole
batch, which on a CPU is far cheaper than one prompt at a time), each batch under its own seed so the
result does not depend on what ran before. Responses are scored with the training rule scorer
(:func:`longrl.rewards.rule.rule_score`): ``</think>`` required, the answer after the last marker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch

from longrl.data.records import DocQASample


def _batch_seed(seed: int, batch_index: int) -> int:
    digest = hashlib.sha256(f"heldout:{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids_BT, attention_mask_BT) with the prompts right-aligned."""
    width = max(len(p) for p in prompts)
    ids_BT = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids_BT[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask_BT[b, width - len(p):] = 1
    return ids_BT, mask_BT


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                   top_p: float, seed: int) -> list[list[int]]:
    """Completion ids per prompt (cut after the first end-of-sequence token, which is dropped)."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids_BT, mask_BT = _left_pad(prompts, pad)
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
                if temperature > 0 else {"do_sample": False})
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out_BL = model.generate(input_ids=ids_BT.to(device), attention_mask=mask_BT.to(device),
                                max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **sampling)
    rows = out_BL[:, ids_BT.shape[1]:].tolist()
    return [row[:row.index(eos)] if eos in row else row for row in rows]


def length_batches(lengths: list[int], batch_size: int, token_budget: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most ``batch_size`` prompts and (beyond the first
    prompt of a batch) at most ``token_budget`` padded prompt tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        if cur is None or len(cur) >= batch_size or (len(cur) + 1) * lengths[i] > token_budget:
            batches.append([i])
        else:
            cur.append(i)
    return batches


def generate_all(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                 top_p: float, batch_size: int, seed: int, token_budget: int = 1 << 62,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
    """Completions for every prompt, generated in length-sorted batches; returned in input order.

    ``token_budget`` bounds a batch's padded prompt tokens: the attention of a left-padded batch runs
    with an explicit mask, whose cost grows with batch x length^2."""
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for b, idx in enumerate(length_batches([len(p) for p in prompts], batch_size, token_budget)):
            comps = generate_batch(model, tokenizer, [prompts[i] for i in idx], max_new_tokens, temperature,
                                   top_p, _batch_seed(seed, b))
            for i, c in zip(idx, comps):
                out[i] = c
            if on_batch is not None:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return out


def accuracy_table(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy overall, per set, and per (set, family) from scored records."""
    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    sets: dict[str, dict[str, list[float]]] = {}
    for r in records:
        sets.setdefault(r["set"], {}).setdefault(r["family"], []).append(float(r["acc"]))
    out: dict[str, Any] = {"acc": mean([float(r["acc"]) for r in records]), "n": len(records), "sets": {}}
    for name, fams in sets.items():
        every = [a for v in fams.values() for a in v]
        out["sets"][name] = {"acc": mean(every), "n": len(every),
                             "families": {f: mean(v) for f, v in sorted(fams.items())}}
    return out


def evaluate_sets(model, tokenizer, sets: dict[str, list[DocQASample]], *, max_new_tokens: int,
                  temperature: float, top_p: float, k: int = 1, batch_size: int = 32, seed: int = 0,
                  max_input_tokens: int | None = None, require_think: bool = True, token_budget: int = 1 << 62,
                  on_batch: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``k`` generations per held-out question; returns (:func:`accuracy_table`, records)."""
    from longrl.data.prompt import chat_prompt_ids
    from longrl.rewards.rule import rule_score

    items = [(name, s) for name, samples in sets.items() for s in samples for _ in range(k)]
    prompts = [chat_prompt_ids(tokenizer, s, max_input_tokens) for _, s in items]
    comps = generate_all(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_p=top_p, batch_size=batch_size, seed=seed, token_budget=token_budget,
                         on_batch=on_batch)
    records = []
    for (name, s), ids in zip(items, comps):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        res = rule_score(s.task, text, list(s.answers), s.question, s.document, require_think=require_think)
        records.append({"set": name, "id": s.id, "family": s.metadata.get("family", s.task), "task": s.task,
                        "response": text, "pred": res.pred, "answers": list(s.answers), "acc": float(res.acc),
                        "reason": res.reason, "length": len(ids)})
    return accuracy_table(records), records
