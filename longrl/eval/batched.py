"""An in-process harness backend that generates many prompts per forward (the pipeline's held-out evaluation).

The prompts of all jobs are sorted by length and generated in left-padded batches with ``model.generate``
(one forward per token for a whole batch, which on a CPU is far cheaper than one prompt at a time), each
batch under its own seed so the result does not depend on what ran before.

The prompts themselves are prefilled one at a time (:func:`prefill_apart`): a lone prompt's attention is
plain causal attention, while a left-padded batch's needs an explicit mask, which CPU attention kernels run
far slower (SmolLM2, 2K-token prompts, batches of 8 on 2 cores: 4.75 -> 2.96 s per question;
``bench/bench_eval.py``). The decode steps, where batching pays, still run as one batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from longrl.eval.harness import Generation, Job
from longrl.models import maybe_autocast
from longrl.models.kernels import cache_kwargs


def batch_seed(seed: int, batch_index: int) -> int:
    digest = hashlib.sha256(f"heldout:{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids_BT, attention_mask_BT) with the prompts right-aligned."""
    width = max(len(p) for p in prompts)
    ids_BT = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids_BT[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask_BT[b, width - len(p):] = 1
    return ids_BT, mask_BT


def prefill_apart(model, prompts: list[list[int]], width: int) -> DynamicCache | None:
    """A cache of ``width - 1`` positions holding every prompt but its last token, each prompt prefilled on its
    own and its keys/values right-aligned (the rows' padding positions stay zero; the attention mask hides
    them). ``model.generate`` then runs only the last prompt tokens, as one batch. None where a layer's cache
    is not a plain full-attention one (a sliding window would not survive the padding): prefill as a batch.
    """
    device = next(model.parameters()).device
    keys_values: list[tuple[torch.Tensor, torch.Tensor]] = []
    for b, prompt in enumerate(prompts):
        if len(prompt) < 2:
            continue  # nothing to prefill: the row is all padding in the cache
        one = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([prompt[:-1]], device=device), use_cache=True, logits_to_keep=1,
              **cache_kwargs(model, one))
        if not one.layers or any(type(layer) is not DynamicLayer for layer in one.layers):
            return None
        if not keys_values:
            keys_values = [tuple(t.new_zeros(len(prompts), t.shape[1], width - 1, t.shape[3])
                                 for t in (layer.keys, layer.values)) for layer in one.layers]
        start = width - len(prompt)
        for (k_BHTD, v_BHTD), layer in zip(keys_values, one.layers):
            k_BHTD[b, :, start:] = layer.keys[0]
            v_BHTD[b, :, start:] = layer.values[0]
    if not keys_values:
        return None
    cache = DynamicCache(config=model.config)
    for i, (k_BHTD, v_BHTD) in enumerate(keys_values):
        cache.update(k_BHTD, v_BHTD, i)
    return cache


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                   top_p: float, seed: int, autocast: str = "none") -> list[tuple[list[int], bool]]:
    """(completion ids, stopped) per prompt: ids cut before the first end-of-sequence token; ``stopped`` when
    there was one. The prompts are prefilled one at a time (:func:`prefill_apart`), decoded as one batch.
    ``autocast``: see :func:`longrl.models.maybe_autocast`."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids_BT, mask_BT = left_pad(prompts, pad)
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
                if temperature > 0 else {"do_sample": False})
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), maybe_autocast(model, autocast):
        cache = prefill_apart(model, prompts, ids_BT.shape[1]) if ids_BT.shape[1] > 1 else None
        torch.manual_seed(seed)
        out_BL = model.generate(input_ids=ids_BT.to(device), attention_mask=mask_BT.to(device),
                                max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **sampling,
                                **(cache_kwargs(model, cache) if cache is not None else {}))
    rows = out_BL[:, ids_BT.shape[1]:].tolist()
    return [(row[:row.index(eos)], True) if eos in row else (row, False) for row in rows]


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


class BatchedBackend:
    """Length-sorted, left-padded batches through ``model.generate``; a batch's seed depends only on
    ``seed`` and its index. ``token_budget`` bounds a batch's padded prompt tokens: the attention of a
    left-padded batch runs with an explicit mask, whose cost grows with batch x length^2."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32, seed: int = 0, token_budget: int = 1 << 62,
                 autocast: str = "none"):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.seed, self.token_budget, self.autocast = batch_size, seed, token_budget, autocast

    def prompt_ids(self, job: Job) -> list[int]:
        text = self.tokenizer.apply_chat_template(job.messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def run(self, jobs: list[Job], on_done: Callable[[Job, Generation], None], *, max_new_tokens: int,
            temperature: float, top_p: float) -> None:
        prompts = [self.prompt_ids(job) for job in jobs]
        was_training = self.model.training
        self.model.eval()
        try:
            batches = length_batches([len(p) for p in prompts], self.batch_size, self.token_budget)
            for b, idx in enumerate(batches):
                outs = generate_batch(self.model, self.tokenizer, [prompts[i] for i in idx], max_new_tokens,
                                      temperature, top_p, batch_seed(self.seed, b), self.autocast)
                for i, (ids, stopped) in zip(idx, outs):
                    text = self.tokenizer.decode(ids, skip_special_tokens=False)
                    on_done(jobs[i], Generation(text, "stop" if stopped else "length", len(ids)))
        finally:
            self.model.train(was_training)
