"""HF rollout backend: prefill-once sampling against full recomputation and model.generate."""

from __future__ import annotations

import pytest
import torch

from longrl.models import TINY_MODEL_TYPES, tiny_causal_lm
from longrl.rollout.hf import HFGenerator, sample_next

VOCAB = 1000


class StubTokenizer:
    """Just enough tokenizer for the generator: ids, and a decode that names them."""

    def __init__(self, eos_token_id=999, pad_token_id=998):
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id

    def decode(self, ids, skip_special_tokens=True):
        special = {self.eos_token_id, self.pad_token_id} if skip_special_tokens else set()
        return " ".join(f"t{i}" for i in ids if i not in special)


def _tiny(model_type: str):
    m = tiny_causal_lm(model_type, vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                       max_position_embeddings=256, tie_word_embeddings=False, eos_token_id=None, bos_token_id=None)
    m.generation_config.eos_token_id = None
    return m.eval()


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def model(request):
    """Every architecture the shared-prompt decode supports (the tests below run once per type)."""
    return _tiny(request.param)


PROMPTS = [[5, 17, 300, 42, 8, 9, 77, 123], [600, 601, 2]]


def _reference_sampling(model, prompt, n, steps, temperature, top_p, seed):
    """Same sampler, but every step recomputes the full sequences without a cache; [n, steps]."""
    rng = torch.Generator().manual_seed(seed)
    seq_NT = torch.tensor([prompt] * n)
    with torch.no_grad():
        for _ in range(steps):
            logits_NV = model(input_ids=seq_NT).logits[:, -1]
            seq_NT = torch.cat([seq_NT, sample_next(logits_NV, temperature, top_p, rng).unsqueeze(1)], 1)
    return seq_NT[:, len(prompt):].tolist()


def test_shared_prefill_equals_full_recompute_sampling(model):
    gen = HFGenerator(model, StubTokenizer(eos_token_id=None, pad_token_id=0), seed=7)
    out = gen.generate(PROMPTS[:1], n=4, max_new_tokens=6, temperature=1.0, top_p=0.9)
    assert len(out) == 1 and len(out[0]) == 4
    want = _reference_sampling(model, PROMPTS[0], 4, 6, 1.0, 0.9, seed=7)
    assert [c.token_ids for c in out[0]] == want
    assert all(c.finish_reason == "length" and len(c.token_ids) == 6 for c in out[0])
    assert out[0][0].text == " ".join(f"t{i}" for i in want[0])


def test_seeded_determinism(model):
    a = HFGenerator(model, StubTokenizer(), seed=3).generate(PROMPTS, n=3, max_new_tokens=5)
    b = HFGenerator(model, StubTokenizer(), seed=3).generate(PROMPTS, n=3, max_new_tokens=5)
    c = HFGenerator(model, StubTokenizer(), seed=4).generate(PROMPTS, n=3, max_new_tokens=5)
    ids = [[x.token_ids for x in group] for group in a]
    assert ids == [[x.token_ids for x in group] for group in b]
    assert ids != [[x.token_ids for x in group] for group in c]


def test_greedy_matches_model_generate(model):
    gen = HFGenerator(model, StubTokenizer(eos_token_id=None, pad_token_id=0))
    out = gen.generate(PROMPTS, n=2, max_new_tokens=7, temperature=0.0)
    for prompt, group in zip(PROMPTS, out):
        ref = model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=7,
                             pad_token_id=0)[0, len(prompt):].tolist()
        assert [c.token_ids for c in group] == [ref, ref]


def test_tiny_top_p_is_greedy(model):
    greedy = HFGenerator(model, StubTokenizer()).generate(PROMPTS, n=2, max_new_tokens=4, temperature=0.0)
    nucleus = HFGenerator(model, StubTokenizer()).generate(PROMPTS, n=2, max_new_tokens=4, top_p=1e-6)
    assert [[c.token_ids for c in g] for g in greedy] == [[c.token_ids for c in g] for g in nucleus]


def test_stops_at_eos_per_sequence_and_restores_train_mode(model):
    greedy = HFGenerator(model, StubTokenizer()).generate(PROMPTS[:1], n=1, max_new_tokens=6, temperature=0.0)
    ids = greedy[0][0].token_ids
    k = next(i for i in range(2, len(ids)) if ids.index(ids[i]) == i)   # a token not seen earlier in the row
    eos = ids[k]
    model.train()
    gen = HFGenerator(model, StubTokenizer(eos_token_id=eos))
    out = gen.generate(PROMPTS[:1], n=3, max_new_tokens=6, temperature=0.0)
    assert model.training
    for c in out[0]:
        assert c.finish_reason == "stop" and c.token_ids == ids[:k + 1]
        assert f"t{eos}" not in c.text.split()
    model.eval()


def test_num_return_sequences_baseline_shapes(model):
    gen = HFGenerator(model, StubTokenizer(), shared_prefill=False)
    out = gen.generate(PROMPTS, n=3, max_new_tokens=4)
    assert [len(g) for g in out] == [3, 3]
    assert all(len(c.token_ids) <= 4 and c.finish_reason in ("stop", "length") for g in out for c in g)


def test_prompt_cache_stays_single_copy(model, monkeypatch):
    # the shared path keeps the prompt keys/values at batch 1 and gives each row its own buffer
    from longrl.rollout import hf

    caches = []
    real = hf.GroupDecodeCache

    class Spy(real):
        def __init__(self, *a):
            super().__init__(*a)
            caches.append(self)

    monkeypatch.setattr(hf, "GroupDecodeCache", Spy)
    HFGenerator(model, StubTokenizer(eos_token_id=None)).generate(PROMPTS[:1], n=3, max_new_tokens=4)
    (cache,) = caches
    assert cache.t == 3 and cache.prompt_kv[0][0].shape[:3] == (1, 2, len(PROMPTS[0]))
    assert cache.own_kv[0][0].shape[:3] == (3, 2, 4)


def test_unsupported_architecture_uses_repeated_cache():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    gpt2.generation_config.eos_token_id = None
    out = HFGenerator(gpt2, StubTokenizer(eos_token_id=None, pad_token_id=0)).generate(
        PROMPTS[:1], n=2, max_new_tokens=5, temperature=0.0)
    ref = gpt2.generate(input_ids=torch.tensor(PROMPTS[:1]), do_sample=False, max_new_tokens=5,
                        pad_token_id=0)[0, len(PROMPTS[0]):].tolist()
    assert [c.token_ids for c in out[0]] == [ref, ref]


def test_peft_lora_model_matches_generate(model):
    import peft
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    try:
        out = HFGenerator(lora, StubTokenizer(eos_token_id=None, pad_token_id=0)).generate(
            PROMPTS[1:], n=2, max_new_tokens=5, temperature=0.0)
        ref = lora.generate(input_ids=torch.tensor(PROMPTS[1:]), do_sample=False, max_new_tokens=5,
                            pad_token_id=0)[0, len(PROMPTS[1]):].tolist()
        assert [c.token_ids for c in out[0]] == [ref, ref]
    finally:
        lora.unload()
