"""The held-out evaluation's batched generation: prompts prefilled one at a time, decoded as one left-padded batch,
must give what each prompt gives on its own."""

from __future__ import annotations

import pytest
import torch

import longrl.eval.batched as batched
from longrl.eval.batched import generate_batch, prefill_apart
from longrl.models import TINY_MODEL_TYPES, tiny_causal_lm
from longrl.rollout.hf import sample_next

VOCAB = 500
EOS, PAD = 499, 498
PROMPTS = [[5, 17, 300, 42, 8, 9, 77, 123, 4, 4, 60], [600 % VOCAB, 2, 3], [7], [11, 12, 13, 14, 15, 16]]


class Tok:
    def __init__(self):
        self.eos_token_id, self.pad_token_id = EOS, PAD


@pytest.fixture(autouse=True)
def apart_from_two_tokens(monkeypatch):
    """The prompts here are short: take the prefill-apart path from 2 tokens on (except where a test resets it)."""
    monkeypatch.setattr(batched, "APART_MIN_TOKENS", 2)


def test_only_long_batches_leave_generate(monkeypatch):
    """Short batches (the short-document demos) stay on ``model.generate``; long ones decode in place."""
    monkeypatch.setattr(batched, "APART_MIN_TOKENS", 512)
    model = _tiny("qwen2")
    calls = []
    real = batched.decode_padded
    monkeypatch.setattr(batched, "decode_padded", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    short = generate_batch(model, Tok(), PROMPTS, max_new_tokens=4, temperature=0.0, top_p=1.0, seed=0)
    assert calls == [] and short == [_alone(model, p, 4) for p in PROMPTS]
    long_prompts = [[(7 * i + j) % 400 for j in range(n)] for i, n in enumerate((512, 300))]
    long = generate_batch(model, Tok(), long_prompts, max_new_tokens=4, temperature=0.0, top_p=1.0, seed=0)
    assert calls == [2] and long == [_alone(model, p, 4) for p in long_prompts]


def _tiny(model_type: str, **config):
    return tiny_causal_lm(model_type, vocab_size=VOCAB, hidden_size=64, num_layers=2, max_position_embeddings=256,
                          tie_word_embeddings=False, eos_token_id=EOS, bos_token_id=None, **config).eval()


def _alone(model, prompt, steps):
    """Greedy completion of one prompt with no padding and no batch: the reference."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=steps, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
    row = out[0, len(prompt):].tolist()
    return (row[:row.index(EOS)], True) if EOS in row else (row, False)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_batch_equals_each_prompt_alone(model_type):
    model = _tiny(model_type)
    with torch.no_grad():
        assert batched.decode_padded(model, PROMPTS, 2, 0.0, 1.0, 0, EOS, PAD) is not None  # the in-place decode ran
    got = generate_batch(model, Tok(), PROMPTS, max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0)
    assert got == [_alone(model, p, 12) for p in PROMPTS]
    assert all(len(ids) > 0 for ids, _ in got)


def test_generate_fallback_continues_the_prefilled_cache(monkeypatch):
    """A model the in-place decode does not take still gets the prompts prefilled apart, then ``generate``."""
    model = _tiny("llama")
    monkeypatch.setattr(batched, "shared_prefix_unsupported_reason", lambda m: "not supported here")
    calls = []
    real = batched.prefill_apart
    monkeypatch.setattr(batched, "prefill_apart", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    got = generate_batch(model, Tok(), PROMPTS, max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0)
    assert calls == [max(map(len, PROMPTS))]
    assert got == [_alone(model, p, 12) for p in PROMPTS]


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_prefill_apart_right_aligns_each_prompts_own_cache(model_type):
    model = _tiny(model_type)
    width = max(map(len, PROMPTS))
    with torch.no_grad():
        keys_values = prefill_apart(model, PROMPTS, width, extra=5)
        assert keys_values is not None and len(keys_values) == 2
        for b, p in enumerate(PROMPTS):
            keys = keys_values[0][0][b]  # [Hkv, width - 1 + 5, D]
            assert keys.shape[1] == width - 1 + 5
            pad = width - len(p)
            assert torch.count_nonzero(keys[:, :pad]) == 0, f"row {b}: its padding columns must stay empty"
            assert torch.count_nonzero(keys[:, width - 1:]) == 0, "the decode columns start empty"
            if len(p) > 1:
                alone = model(input_ids=torch.tensor([p[:-1]]), use_cache=True).past_key_values
                torch.testing.assert_close(keys[:, pad:width - 1], alone.layers[0].keys[0])


def _reference_sampling(model, prompts, steps, temperature, top_p, seed):
    """The same sampler, every step recomputing each row's unpadded sequence from scratch; [B, steps]."""
    rng = torch.Generator().manual_seed(seed)
    seqs = [list(p) for p in prompts]
    with torch.no_grad():
        for _ in range(steps):
            logits_BV = torch.cat([model(input_ids=torch.tensor([s])).logits[:, -1] for s in seqs])
            for s, tok in zip(seqs, sample_next(logits_BV, temperature, top_p, rng).tolist()):
                s.append(tok)
    return [s[len(p):] for s, p in zip(seqs, prompts)]


@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
def test_sampling_equals_full_recompute(model_type):
    """At T > 0 each batch draws from the batch's seed exactly what recomputing every row alone would."""
    model = _tiny(model_type)
    tok = Tok()
    tok.eos_token_id = None
    got = generate_batch(model, tok, PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    want = _reference_sampling(model, PROMPTS, 10, 1.0, 0.9, seed=3)
    assert [ids for ids, _ in got] == want and not any(stopped for _, stopped in got)
    assert got != generate_batch(model, tok, PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=4)


def test_rows_stop_at_their_own_end_token():
    model = _tiny("llama")
    out = batched.decode_padded(model, PROMPTS, 30, 1.0, 1.0, 0, stop_id=7, pad_id=PAD)
    for row in out:
        if 7 in row:
            assert set(row[row.index(7) + 1:]) <= {PAD}, "a finished row keeps only padding"


def test_sliding_window_layers_prefill_as_a_batch():
    """A sliding-window cache would drop the padded rows' keys: those models keep the batch prefill."""
    model = _tiny("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    with torch.no_grad():
        assert prefill_apart(model, PROMPTS, max(map(len, PROMPTS))) is None
        assert batched.decode_padded(model, PROMPTS, 4, 0.0, 1.0, 0, EOS, PAD) is None
    got = generate_batch(model, Tok(), PROMPTS, max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0)
    assert [len(ids) for ids, stopped in got if not stopped] == [6] * sum(not s for _, s in got)


def test_a_refused_prefill_is_not_tried_twice(monkeypatch):
    """When the in-place decode's prefill refuses the cache, the batch goes straight to ``generate``."""
    model = _tiny("llama")
    calls = []
    monkeypatch.setattr(batched, "prefill_apart", lambda *a, **k: calls.append(a[2]))
    got = generate_batch(model, Tok(), PROMPTS, max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0)
    assert calls == [max(map(len, PROMPTS))]
    assert got == [_alone(model, p, 6) for p in PROMPTS]
