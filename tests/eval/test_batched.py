"""The held-out evaluation's batched generation: prompts prefilled one at a time, decoded as one left-padded batch,
must give what each prompt gives on its own."""

from __future__ import annotations

import pytest
import torch

import longrl.eval.batched as batched
from longrl.eval.batched import generate_batch, left_pad, prefill_apart
from longrl.models import TINY_MODEL_TYPES, tiny_causal_lm

VOCAB = 500
EOS, PAD = 499, 498
PROMPTS = [[5, 17, 300, 42, 8, 9, 77, 123, 4, 4, 60], [600 % VOCAB, 2, 3], [7], [11, 12, 13, 14, 15, 16]]


class Tok:
    eos_token_id, pad_token_id = EOS, PAD


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
    got = generate_batch(model, Tok(), PROMPTS, max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0)
    assert got == [_alone(model, p, 12) for p in PROMPTS]
    assert all(len(ids) > 0 for ids, _ in got)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_prefill_apart_right_aligns_each_prompts_own_cache(model_type):
    model = _tiny(model_type)
    ids_BT, _ = left_pad(PROMPTS, PAD)
    width = ids_BT.shape[1]
    with torch.no_grad():
        cache = prefill_apart(model, PROMPTS, width)
        assert cache is not None and len(cache.layers) == 2
        for b, p in enumerate(PROMPTS):
            keys = cache.layers[0].keys[b]  # [Hkv, width - 1, D]
            assert keys.shape[1] == width - 1
            pad = width - len(p)
            assert torch.count_nonzero(keys[:, :pad]) == 0, f"row {b}: its padding positions must stay empty"
            if len(p) > 1:
                alone = model(input_ids=torch.tensor([p[:-1]]), use_cache=True).past_key_values
                torch.testing.assert_close(keys[:, pad:], alone.layers[0].keys[0])


def test_sampling_draws_the_same_tokens_as_a_batch_prefill(monkeypatch):
    """At T > 0 the batch's seed drives the same draws whichever way the prompts were prefilled."""
    model = _tiny("llama")
    apart = generate_batch(model, Tok(), PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    assert apart == generate_batch(model, Tok(), PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    monkeypatch.setattr(batched, "prefill_apart", lambda *a, **k: None)
    assert apart == generate_batch(model, Tok(), PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3)
    assert apart != generate_batch(model, Tok(), PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=4)


def test_sliding_window_layers_prefill_as_a_batch():
    """A sliding-window cache would drop the padded rows' keys: those models keep the batch prefill."""
    model = _tiny("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    ids_BT, _ = left_pad(PROMPTS, PAD)
    with torch.no_grad():
        assert prefill_apart(model, PROMPTS, ids_BT.shape[1]) is None
    got = generate_batch(model, Tok(), PROMPTS, max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0)
    assert [len(ids) for ids, stopped in got if not stopped] == [6] * sum(not s for _, s in got)
