"""The in-process vLLM engine on the real SmolLM2-135M (fp32, tied embeddings): the CPU compiled-mode trap
(wrong text) and the tied output layer only show on a real model."""

from __future__ import annotations

import pytest
from _vllm_checks import LOGPROB_ATOL, check_engine_matches_trainer, train_steps
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.rollout.hf import stop_token_ids

pytestmark = pytest.mark.vllm


def test_smollm2_engine_follows_trainer_exactly(smollm2_dir):
    from longrl.rollout.vllm_engine import VLLMGenerator

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    gen = VLLMGenerator(model, tok, str(smollm2_dir), kv_cache_gib=1, max_model_len=512, seed=0)
    try:
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
                   for q in ("What is the capital of France?", "Name a prime number larger than 10.")]
        stop = stop_token_ids(model, tok)
        first = gen.generate(prompts[:1], n=1, max_new_tokens=12, temperature=0.0)[0][0]
        assert "Paris" in first.text, first.text  # eager mode: the compiled CPU mode got this wrong
        gaps = [check_engine_matches_trainer(gen, model, prompts, 12, stop, LOGPROB_ATOL["smollm2"])]
        batch = tok.encode("The capital of France is Lyon. The capital of France is Lyon.")
        for _ in train_steps(model, batch, steps=2, lr=1e-4):
            gen.sync_weights(model)
            gaps.append(check_engine_matches_trainer(gen, model, prompts, 12, stop, LOGPROB_ATOL["smollm2"]))
        print(f"SmolLM2 max |engine - trainer| log-prob per step: {gaps}")
    finally:
        gen.close()
