"""An in-process harness backend that generates many prompts per forward (the pipeline's held-out evaluation).

The prompts of all jobs are sorted by length and generated in left-padded batches with ``model.generate``
(one forward per token for a whole batch, which on a CPU is far cheaper than one prompt at a time), each
batch under its own seed so the result does not depend on what ran before.

On a CPU, from :data:`APART_MIN_TOKENS` padded tokens, the prompts are prefilled one at a time
(:func:`prefill_apart`): a lone prompt's attention is plain causal attention, while a left-padded batch's needs
an explicit mask, which CPU attention kernels run far slower. The batch is then decoded in place
(:class:`PaddedDecodeCache`), without ``DynamicCache``'s per-step copy of the whole cache. SmolLM2, 8 prompts
of ~2.1K tokens, bf16 autocast, 2 cores: prefill 3.3 -> 2.2 s per prompt, decode 114 -> 81 ms per step
(``python -m bench.bench_eval`` measures it against ``generate``). On a GPU (not measured there) the batch
goes through ``model.generate``, as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from longrl.eval.harness import Generation, Job
from longrl.models import maybe_autocast
from longrl.models.kernels import (
    cache_kwargs,
    install_shared_attention,
    prepared_mask,
    shared_prefix_unsupported_reason,
    unwrap_peft,
)
from longrl.rollout.hf import sample_next


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


APART_MIN_TOKENS = 512
"""Padded prompt width from which :func:`generate_batch` prefills apart and decodes in place (on a CPU). Below
it ``model.generate`` runs the batch: there the masked prefill and the cache copies are cheap, and the
short-document demos keep the evaluation (and the sampling stream) their published numbers came from."""


def prefill_apart(model, prompts: list[list[int]], width: int,
                  extra: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per layer, (keys, values) ``[B, Hkv, width - 1 + extra, D]`` holding every prompt but its last token,
    each prompt prefilled on its own and right-aligned to column ``width - 1`` (its padding columns stay zero;
    a mask must hide them); ``extra`` empty columns follow for the decode. None where a layer's cache is not
    a plain full-attention one (a sliding window would not survive the padding): prefill as a batch."""
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
            keys_values = [tuple(t.new_zeros(len(prompts), t.shape[1], width - 1 + extra, t.shape[3])
                                 for t in (layer.keys, layer.values)) for layer in one.layers]
        start = width - len(prompt)
        for (k_BKCD, v_BKCD), layer in zip(keys_values, one.layers):
            k_BKCD[b, :, start:width - 1] = layer.keys[0]
            v_BKCD[b, :, start:width - 1] = layer.values[0]
    return keys_values or None


class PaddedDecodeCache:
    """KV cache for decoding a left-padded batch of different prompts, written in place.

    Row b's prompt occupies columns ``[start_b, width - 1)`` of preallocated per-layer buffers (from
    :func:`prefill_apart`); decode step t writes column ``width - 1 + t`` for every row. :meth:`attention`
    scores each row's query heads against its own keys per KV head (no repeat of the keys to the query heads)
    with the padding columns masked, so a step costs one read of the cache: ``DynamicCache`` instead copies
    the whole cache (``torch.cat``) every step. Plugged in like :class:`longrl.rollout.hf.GroupDecodeCache`.
    """

    def __init__(self, keys_values: list[tuple[torch.Tensor, torch.Tensor]], starts: list[int], width: int):
        self.kv, self.col = keys_values, width - 1
        k = keys_values[0][0]
        columns = torch.arange(k.shape[2], device=k.device)
        starts_B = torch.tensor(starts, device=k.device)
        self.mask_B11C = torch.zeros(len(starts), 1, 1, k.shape[2], device=k.device).masked_fill(
            (columns[None, :] < starts_B[:, None])[:, None, None, :], float("-inf"))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.col

    def update(self, key_B1, value_B1, layer_idx: int, *args, **kwargs):
        """Store this step's keys/values ([B, Hkv, 1, D]) in column ``col``; return the columns so far."""
        k_BKCD, v_BKCD = self.kv[layer_idx]
        k_BKCD[:, :, self.col] = key_B1[:, :, 0]
        v_BKCD[:, :, self.col] = value_B1[:, :, 0]
        return k_BKCD[:, :, :self.col + 1], v_BKCD[:, :, :self.col + 1]

    def advance(self) -> None:
        self.col += 1

    def attention(self, module, query_BH1D, key_BKcD, value_BKcD, scaling):
        """One query per row against its own columns, padding masked; ([B, 1, Hq, D], None)."""
        b, hq, _, d = query_BH1D.shape
        hkv, c = key_BKcD.shape[1], key_BKcD.shape[2]
        scale = scaling if scaling is not None else d ** -0.5
        q_BKrD = query_BH1D.reshape(b, hkv, hq // hkv, d) * scale  # head h = kv * r + j, as in repeat_kv
        scores_BKrc = (q_BKrD @ key_BKcD.transpose(2, 3)).float() + self.mask_B11C[..., :c]
        out_BKrD = torch.softmax(scores_BKrc, dim=-1).to(value_BKcD.dtype) @ value_BKcD
        return out_BKrD.reshape(b, 1, hq, d), None


def decode_padded(model, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float,
                  seed: int, stop_id: int | None, pad_id: int) -> list[list[int]] | None:
    """Sampled completions (rows padded with ``pad_id`` after ``stop_id``, kept) of prompts prefilled apart and
    decoded as one batch through :class:`PaddedDecodeCache`, with the rollout sampler
    (:func:`longrl.rollout.hf.sample_next`, a generator seeded with ``seed``). None where the model is not one
    the shared paths support: decode with ``generate``."""
    if shared_prefix_unsupported_reason(model) is not None:
        return None
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    keys_values = prefill_apart(model, prompts, width, extra=max_new_tokens)
    if keys_values is None:
        return None
    base = unwrap_peft(model)
    install_shared_attention(base.config)
    cache = PaddedDecodeCache(keys_values, [width - len(p) for p in prompts], width)
    decoder, head, mask = base.get_decoder(), base.get_output_embeddings(), prepared_mask(device)
    rng = torch.Generator(device=device).manual_seed(seed)
    tok_B = torch.tensor([p[-1] for p in prompts], device=device)
    pos_B1 = torch.tensor([[len(p) - 1] for p in prompts], device=device)
    finished_B = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    steps = []
    for _ in range(max_new_tokens):
        hidden_B1H = decoder(input_ids=tok_B[:, None], position_ids=pos_B1, use_cache=True, attention_mask=mask,
                             longrl_decode=cache, **cache_kwargs(decoder, cache)).last_hidden_state
        cache.advance()
        tok_B = sample_next(head(hidden_B1H[:, -1]), temperature, top_p, rng).masked_fill(finished_B, pad_id)
        steps.append(tok_B)
        if stop_id is not None:
            finished_B |= tok_B == stop_id
        if bool(finished_B.all()):
            break
        pos_B1 = pos_B1 + 1
    return torch.stack(steps, dim=1).tolist()


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                   top_p: float, seed: int, autocast: str = "none") -> list[tuple[list[int], bool]]:
    """(completion ids, stopped) per prompt: ids cut before the first end-of-sequence token; ``stopped`` when
    there was one. On a CPU, from :data:`APART_MIN_TOKENS` padded prompt tokens, the prompts are prefilled one
    at a time and decoded as one batch (:func:`decode_padded`; ``model.generate`` continuing
    :func:`prefill_apart`'s cache for models the shared paths do not support); otherwise ``model.generate``
    runs the whole batch.
    ``autocast``: see :func:`longrl.models.maybe_autocast`."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids_BT, mask_BT = left_pad(prompts, pad)
    width = ids_BT.shape[1]
    sampling = ({"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
                if temperature > 0 else {"do_sample": False})
    devices = [device.index or 0] if device.type == "cuda" else []
    rows = None
    with torch.random.fork_rng(devices=devices), maybe_autocast(model, autocast):
        apart = device.type == "cpu" and width >= APART_MIN_TOKENS and max_new_tokens > 0
        in_place = apart and shared_prefix_unsupported_reason(model) is None
        if in_place:  # None back means prefill_apart refused the cache: prefilling apart again would too
            rows = decode_padded(model, prompts, max_new_tokens, temperature, top_p, seed, eos, pad)
        if rows is None:
            keys_values = prefill_apart(model, prompts, width) if apart and not in_place else None
            cache = None
            if keys_values is not None:
                cache = DynamicCache(config=model.config)
                for i, (k_BKCD, v_BKCD) in enumerate(keys_values):
                    cache.update(k_BKCD, v_BKCD, i)
            torch.manual_seed(seed)
            out_BL = model.generate(input_ids=ids_BT.to(device), attention_mask=mask_BT.to(device),
                                    max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **sampling,
                                    **(cache_kwargs(model, cache) if cache is not None else {}))
            rows = out_BL[:, width:].tolist()
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
    ``seed`` and its index. ``token_budget`` bounds a batch's padded prompt tokens: its KV cache, and on
    models that prefill as a batch (:func:`prefill_apart` returns None) the masked attention, whose cost
    grows with batch x length^2."""

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
