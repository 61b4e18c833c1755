"""Shared-prompt group forward against the naive per-sequence computation (values and gradients)."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from longrl.models import TINY_MODEL_TYPES, tiny_causal_lm
from longrl.models.kernels import SUPPORTED_MODEL_TYPES, enable_activation_checkpointing
from longrl.train.group_forward import group_logprobs, shared_prefix_unsupported_reason

VOCAB = 1000


def _tiny_qwen(seed=0, tie=False, model_type="qwen2"):
    return tiny_causal_lm(model_type, vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                          max_position_embeddings=256, tie_word_embeddings=tie, seed=seed)


def test_every_supported_architecture_is_built_here():
    assert set(SUPPORTED_MODEL_TYPES) == set(TINY_MODEL_TYPES)


def _group(seed=0, prompt_len=24, lengths=(6, 11, 1, 9)):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, VOCAB, (prompt_len,), generator=g).tolist()
    completions = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]
    return prompt, completions


def _reference(model, prompt, completions, temperature=1.0):
    """Each sequence on its own through the full model and full logits: (logps list, entropy list)."""
    logps, ents = [], []
    for comp in completions:
        ids_1T = torch.tensor([prompt + comp])
        logits_TV = model(input_ids=ids_1T).logits[0, len(prompt) - 1:-1] / temperature
        logp_TV = torch.log_softmax(logits_TV.float(), -1)
        logps.append(logp_TV.gather(-1, torch.tensor(comp).unsqueeze(-1)).squeeze(-1))
        ents.append(-(logp_TV.exp() * logp_TV).sum(-1))
    return logps, ents


def _loss_from_lists(logps, ents):
    # a weighted sum touches every token with a distinct weight, so a misplaced token shows up
    return sum(((i + 1) * lp * torch.linspace(1, 2, len(lp))).sum() - 0.1 * e.sum()
               for i, (lp, e) in enumerate(zip(logps, ents)))


def _loss_from_padded(logps_GC, ent_GC, mask_GC):
    return _loss_from_lists([logps_GC[i][mask_GC[i]] for i in range(len(mask_GC))],
                            [ent_GC[i][mask_GC[i]] for i in range(len(mask_GC))])


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _check_against_reference(model, prompt, completions, temperature=1.0, **kwargs):
    logps_GC, ent_GC, mask_GC = group_logprobs(model, prompt, completions, temperature=temperature, **kwargs)
    _loss_from_padded(logps_GC, ent_GC, mask_GC).backward()
    got = _grads(model)
    model.zero_grad()
    ref_logps, ref_ents = _reference(model, prompt, completions, temperature)
    _loss_from_lists(ref_logps, ref_ents).backward()
    want = _grads(model)
    model.zero_grad()
    assert mask_GC.sum(1).tolist() == [len(c) for c in completions]
    for i in range(len(completions)):
        torch.testing.assert_close(logps_GC[i][mask_GC[i]], ref_logps[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent_GC[i][mask_GC[i]], ref_ents[i], atol=1e-5, rtol=1e-5)
    assert logps_GC[~mask_GC].eq(0).all()
    assert got.keys() == want.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
@pytest.mark.parametrize("shared", [True, False])
def test_matches_per_sequence_values_and_grads(shared, model_type):
    model = _tiny_qwen(model_type=model_type)
    assert shared_prefix_unsupported_reason(model) is None
    prompt, completions = _group()
    _check_against_reference(model, prompt, completions, temperature=0.8, chunk=7, shared=shared)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_tied_embeddings_and_single_token_prompt(model_type):
    model = _tiny_qwen(seed=1, tie=True, model_type=model_type)
    prompt, completions = _group(seed=1, prompt_len=1, lengths=(3, 5))
    _check_against_reference(model, prompt, completions)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_gradient_checkpointing(model_type):
    model = _tiny_qwen(seed=2, model_type=model_type)
    enable_activation_checkpointing(model)
    model.train()
    prompt, completions = _group(seed=2)
    _check_against_reference(model, prompt, completions)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_peft_lora_grads_reach_adapters(model_type):
    import peft
    model = _tiny_qwen(seed=3, model_type=model_type)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    prompt, completions = _group(seed=3)
    _check_against_reference(lora, prompt, completions)
    assert shared_prefix_unsupported_reason(lora) is None


def test_no_grad_old_logprobs_match():
    model = _tiny_qwen(seed=4)
    prompt, completions = _group(seed=4, lengths=(4, 4, 4))
    with torch.no_grad():
        shared_GC, _, mask_GC = group_logprobs(model, prompt, completions, with_entropy=False)
        naive_GC, ent, _ = group_logprobs(model, prompt, completions, with_entropy=False, shared=False)
    assert ent is None and mask_GC.all()
    torch.testing.assert_close(shared_GC, naive_GC, atol=1e-5, rtol=1e-5)


def test_unsupported_architecture_falls_back_with_logged_reason(caplog):
    torch.manual_seed(5)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()
    reason = shared_prefix_unsupported_reason(model)
    assert reason is not None and "gpt2" in reason
    prompt, completions = _group(seed=5, prompt_len=10, lengths=(3, 6))
    with caplog.at_level(logging.WARNING, logger="longrl.train.group_forward"):
        _check_against_reference(model, prompt, completions)
    assert any("naive path" in r.getMessage() for r in caplog.records)


def test_sliding_window_mistral_falls_back():
    model = _tiny_qwen(seed=5, model_type="mistral")
    model.config.sliding_window = 8
    reason = shared_prefix_unsupported_reason(model)
    assert reason is not None and "sliding" in reason
    prompt, completions = _group(seed=5, prompt_len=12, lengths=(3, 6))
    _check_against_reference(model, prompt, completions)   # the naive path honours the window


@pytest.mark.parametrize("shared", [True, False])
def test_all_empty_completions(shared):
    logps_GC, ent_GC, mask_GC = group_logprobs(_tiny_qwen(seed=6), [1, 2, 3], [[], []], shared=shared)
    assert logps_GC.shape == ent_GC.shape == mask_GC.shape == (2, 0)
