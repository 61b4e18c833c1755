"""Hugging Face backend: sample G completions per prompt from an in-process model.

With ``shared_prefill=True`` (the default) the prompt is run ONCE per group and the G continuations
are sampled token by token from its KV cache. On the architectures the shared-prompt group forward
supports, the prompt's keys/values stay a single [1, Hkv, P, D] copy: each decode step's G queries
are scored against it in one matmul per KV head and against their own generated keys (kept in a
preallocated [G, Hkv, T, D] buffer, no per-step concatenation), with one softmax over both
(:class:`GroupDecodeCache`). Other models repeat a ``DynamicCache`` to G rows. The
alternative, ``model.generate(num_return_sequences=G)``, prefills G copies of the prompt, which for
a long document is G times the dominant cost. ``shared_prefill=False`` runs exactly that (the
baseline of ``bench/bench_rollout.py``).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache

from longrl.models import maybe_autocast
from longrl.models.kernels import (
    cache_kwargs,
    install_shared_attention,
    prepared_mask,
    shared_prefix_unsupported_reason,
    unwrap_peft,
)
from longrl.rollout.base import Completion, Generator


def sample_next(logits_NV: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None):
    """Next token per row: greedy when temperature == 0, else nucleus sampling at ``temperature``; [N]."""
    if temperature == 0:
        return logits_NV.argmax(-1)
    probs_NV = torch.softmax(logits_NV.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_NV, order_NV = probs_NV.sort(dim=-1, descending=True)
        drop_NV = sorted_NV.cumsum(-1) - sorted_NV > top_p  # keep the smallest prefix with mass >= top_p
        sorted_NV = sorted_NV.masked_fill(drop_NV, 0.0)
        probs_NV = torch.zeros_like(probs_NV).scatter_(-1, order_NV, sorted_NV)
    return torch.multinomial(probs_NV, 1, generator=generator).squeeze(-1)


def stop_token_ids(model, tokenizer) -> list[int]:
    """End-of-sequence ids from the tokenizer and the model's generation config."""
    ids = {tokenizer.eos_token_id} if getattr(tokenizer, "eos_token_id", None) is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return sorted(ids)


@contextlib.contextmanager
def _inference(model):
    """Eval mode and no grad for the duration, restoring the training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class GroupDecodeCache:
    """KV cache for G continuations of one prompt: the prompt's keys/values once, each row's own after.

    Passed to the decoder both as its cache (``update`` stores the new token's keys/values)
    and as ``longrl_decode`` (the registered attention dispatcher calls :meth:`attention`). Call
    :meth:`advance` after each decode step.
    """

    def __init__(self, prompt_kv: list[tuple[torch.Tensor, torch.Tensor]], n: int, max_new_tokens: int):
        self.prompt_kv = prompt_kv  # per layer ([1, Hkv, P, D], [1, Hkv, P, D])
        self.t = 0
        self.own_kv = [(k.new_empty(n, k.shape[1], max_new_tokens, k.shape[3]),
                        v.new_empty(n, v.shape[1], max_new_tokens, v.shape[3])) for k, v in prompt_kv]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prompt_kv[layer_idx][0].shape[2] + self.t

    def update(self, key_N1: torch.Tensor, value_N1: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Store one new token per row ([N, Hkv, 1, D]); return the rows' own keys/values so far."""
        k_own, v_own = self.own_kv[layer_idx]
        k_own[:, :, self.t] = key_N1[:, :, 0]
        v_own[:, :, self.t] = value_N1[:, :, 0]
        return k_own[:, :, :self.t + 1], v_own[:, :, :self.t + 1]

    def advance(self) -> None:
        self.t += 1

    def attention(self, module, query_NH1D, key_NHtD, value_NHtD, scaling):
        """Softmax over (shared prompt keys, own keys) for one query per row; ([N, 1, Hq, D], None)."""
        k_p, v_p = self.prompt_kv[module.layer_idx]
        n, hq, _, d = query_NH1D.shape
        hkv = k_p.shape[1]
        r = hq // hkv  # query heads per KV head; head h = kv * r + j as in repeat_kv
        scale = scaling if scaling is not None else d ** -0.5
        q_NKrD = query_NH1D.view(n, hkv, r, d) * scale
        s_prompt_NKrP = (q_NKrD.transpose(0, 1).reshape(hkv, n * r, d) @ k_p[0].transpose(1, 2)).view(
            hkv, n, r, -1).transpose(0, 1)
        s_own_NKrt = q_NKrD @ key_NHtD.transpose(2, 3)
        p = k_p.shape[2]
        probs = torch.softmax(torch.cat([s_prompt_NKrP, s_own_NKrt], dim=-1).float(), dim=-1).to(query_NH1D.dtype)
        a_prompt_KNrP = probs[..., :p].transpose(0, 1).reshape(hkv, n * r, p)
        out_NKrD = (a_prompt_KNrP @ v_p[0]).view(hkv, n, r, d).transpose(0, 1) + probs[..., p:] @ value_NHtD
        return out_NKrD.reshape(n, 1, hq, d), None


class HFGenerator(Generator):
    """:class:`~longrl.rollout.base.Generator` over a transformers causal LM (optionally peft-wrapped).

    Sampling with ``shared_prefill=True`` draws from a ``torch.Generator`` seeded with ``seed``, so
    a fresh generator with the same seed reproduces the same completions on the same device.
    """

    def __init__(self, model, tokenizer, shared_prefill: bool = True, seed: int = 0, autocast: str = "none"):
        self.model, self.autocast = model, autocast
        self.tokenizer = tokenizer
        self.shared_prefill = shared_prefill
        self.device = next(model.parameters()).device
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self.stop_ids = stop_token_ids(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (self.stop_ids[0] if self.stop_ids else 0)

    def reseed(self, seed: int | None) -> None:
        """Reseed the sampling RNG (None: leave it where it is)."""
        if seed is not None:
            self.rng.manual_seed(seed)

    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> list[list[Completion]]:
        """``result[i][j]`` is the j-th of ``n`` completions of ``prompt_ids[i]`` (one group at a time)."""
        group = self._shared_group if self.shared_prefill else self._hf_generate_group
        with _inference(self.model), maybe_autocast(self.model, self.autocast):
            return [group(list(p), n, max_new_tokens, temperature, top_p) for p in prompt_ids]

    def _shared_group(self, prompt: list[int], n: int, max_new_tokens: int, temperature: float,
                      top_p: float) -> list[Completion]:
        """Prefill once, then sample ``n`` rows until every row stopped or the budget ends."""
        p = len(prompt)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=torch.tensor([prompt], device=self.device), use_cache=True, logits_to_keep=1,
                         **cache_kwargs(self.model, cache))
        step = self._decode_step(cache, n, max_new_tokens)
        logits_NV = out.logits[:, -1].expand(n, -1)
        stop_S = torch.tensor(self.stop_ids, device=self.device, dtype=torch.long)
        finished_N = torch.zeros(n, dtype=torch.bool, device=self.device)
        steps = []
        for t in range(max_new_tokens):
            tok_N = sample_next(logits_NV, temperature, top_p, self.rng)
            tok_N = tok_N.masked_fill(finished_N, self.pad_id)
            steps.append(tok_N)
            finished_N |= torch.isin(tok_N, stop_S)
            if bool(finished_N.all()) or t == max_new_tokens - 1:
                break
            logits_NV = step(tok_N, torch.full((n, 1), p + t, device=self.device, dtype=torch.long))
        tokens_NT = torch.stack(steps, dim=1) if steps else torch.zeros(n, 0, dtype=torch.long)
        return [self._completion(row) for row in tokens_NT.tolist()]

    def _decode_step(self, prompt_cache: DynamicCache, n: int, max_new_tokens: int):
        """A function (tokens [N], positions [N, 1]) -> next logits [N, V] continuing ``prompt_cache``."""
        base = unwrap_peft(self.model)
        if shared_prefix_unsupported_reason(self.model) is not None:
            prompt_cache.batch_repeat_interleave(n)

            def repeated(tok_N, pos_N1):
                return self.model(input_ids=tok_N.unsqueeze(1), position_ids=pos_N1, use_cache=True,
                                  **cache_kwargs(self.model, prompt_cache)).logits[:, -1]
            return repeated
        install_shared_attention(base.config)
        cache = GroupDecodeCache([(layer.keys, layer.values) for layer in prompt_cache.layers], n, max_new_tokens)
        decoder, head = base.get_decoder(), base.get_output_embeddings()
        mask = prepared_mask(self.device)

        def shared(tok_N, pos_N1):
            hidden_N1H = decoder(input_ids=tok_N.unsqueeze(1), position_ids=pos_N1, use_cache=True,
                                 attention_mask=mask, longrl_decode=cache,
                                 **cache_kwargs(decoder, cache)).last_hidden_state
            cache.advance()
            return head(hidden_N1H[:, -1])
        return shared

    def _hf_generate_group(self, prompt: list[int], n: int, max_new_tokens: int, temperature: float,
                           top_p: float) -> list[Completion]:
        """``model.generate(num_return_sequences=n)``: the prompt is prefilled n times."""
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        out_NL = self.model.generate(
            input_ids=torch.tensor([prompt], device=self.device), num_return_sequences=n,
            max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids or None, pad_token_id=self.pad_id,
            **(sampling if temperature > 0 else {"do_sample": False}),
        )
        return [self._completion(row) for row in out_NL[:, len(prompt):].tolist()]

    def _completion(self, row: list[int]) -> Completion:
        """Cut a generated row after its first stop token (kept) and decode it."""
        stop = set(self.stop_ids)
        end = next((i + 1 for i, tok in enumerate(row) if tok in stop), None)
        ids = row[:end] if end is not None else row
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(token_ids=ids, text=text, finish_reason="stop" if end is not None else "length")
