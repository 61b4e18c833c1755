"""The real-model path: SmolLM2-135M-Instruct (Llama architecture) from its GGUF file.

Loading it must give an ordinary, serializable model; the prefill-once rollouts and the shared-prompt
group forward must agree with the naive paths on it; and the documented real-model entry points
(`longrl demo --real --quick`, `longrl eval --model-path`) run end to end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
import yaml

from longrl.config import ConfigError, ModelConfig
from longrl.models import load_policy
from longrl.models.kernels import shared_prefix_unsupported_reason
from longrl.rollout.hf import HFGenerator
from longrl.train.checkpoint import load_model_weights, save_checkpoint
from longrl.train.group_forward import group_logprobs

PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    model, tokenizer = load_policy(ModelConfig(path=str(smollm2_dir), device="cpu", dtype="float32"),
                                   trainable=False)
    return model.eval(), tokenizer


def test_gguf_loads_as_a_plain_serializable_model(smollm2_gguf, smollm2_dir, smollm2, tmp_path):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and shared_prefix_unsupported_reason(model) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # a checkpoint of the loaded model writes and reads back bit-identical weights
    ckpt = save_checkpoint(tmp_path / "ckpt", 1, model=model, tokenizer=tokenizer)
    restored, _ = load_policy(ModelConfig(path=str(smollm2_dir), device="cpu", dtype="float32"), trainable=False)
    with torch.no_grad():
        for p in restored.parameters():
            p.add_(1.0)
    load_model_weights(restored, ckpt / "model")
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name


def test_prefill_once_greedy_equals_generate(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)
    gen = HFGenerator(model, tokenizer)
    (group,) = gen.generate([ids], n=2, max_new_tokens=12, temperature=0.0)
    ref = model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=12,
                         pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
    want = ref[:next((i + 1 for i, t in enumerate(ref) if t in gen.stop_ids), len(ref))]
    assert [c.token_ids for c in group] == [want, want]
    assert "paris" in group[0].text.lower()      # the real model answers; a broken cache would not


def test_group_forward_shared_equals_naive(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)
    completions = [tokenizer.encode(t) for t in ("Paris.", "The capital is Paris, of course.", "Lyon")]
    with torch.no_grad():
        shared_GC, ent_s, mask_GC = group_logprobs(model, ids, completions)
        naive_GC, ent_n, _ = group_logprobs(model, ids, completions, shared=False)
    assert mask_GC.sum(1).tolist() == [len(c) for c in completions]
    torch.testing.assert_close(shared_GC, naive_GC, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ent_s, ent_n, atol=1e-4, rtol=1e-4)


def test_eval_in_process_on_the_real_model(smollm2_dir, shared_samples_dir, tmp_path):
    from longrl.eval.cli import main

    out = tmp_path / "eval"
    rc = main(["--benchmarks", "hotpotqa", "--data-dir", str(shared_samples_dir), "--limit", "1", "--k", "1",
               "--max-input-tokens", "512", "--max-new-tokens", "8", "--no-judge", "--out", str(out),
               "--model-path", str(smollm2_dir)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"]["generated"] == 1 and summary["failed"] == 0


@pytest.mark.timeout(1200)
def test_demo_real_quick_smoke(smollm2_gguf, tmp_path):
    """`make demo-real`'s recipe (`longrl demo --real`) at --quick sizes: every stage on the real model."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "longrl.cli", "demo", "--real", "--quick", "--out", str(out),
                           "--threads", "1"], capture_output=True, text=True, timeout=1100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = out / "stages"
    init = json.loads((stages / "init" / "manifest.json").read_text())
    assert init["input_model"] == str(smollm2_gguf) and init["output_model"] == str(stages / "init" / "final")
    assert init["eval"] is None                              # the recipe's eval_skip: [init]
    for stage in ("init", "sft", "phase1", "phase2"):
        config = json.loads((stages / stage / "final" / "config.json").read_text())
        assert config["model_type"] == "llama" and "quantization_config" not in config, stage
    for stage in ("sft", "phase1", "phase2"):
        assert json.loads((stages / stage / "manifest.json").read_text())["eval"]["n"] == 8, stage
    cfg = yaml.safe_load((out / "report" / "config.yaml").read_text())
    assert cfg["rollout"]["autocast"] == cfg["eval"]["autocast"] == cfg["rl"]["autocast"] == "bfloat16"
    assert cfg["pipeline"]["synthetic"]["families"] == ["lookup", "multihop"]
    assert cfg["pipeline"]["synthetic"]["haystack"] == "prose"
    assert "RL (phase1 -> phase2) moved held-out accuracy" in proc.stdout


def test_demo_model_flags(smollm2_gguf):
    from longrl.demo import add_arguments, demo_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = demo_config(parser.parse_args(["--model", str(smollm2_gguf), "--out", "x"]))
    assert cfg.curriculum.phases[1].max_input_tokens == 1100            # a .gguf --model: demo_smollm2
    cfg = demo_config(parser.parse_args(["--real", "--out", "x"]))
    assert cfg.model.path == str(smollm2_gguf) and cfg.curriculum.phases[1].max_input_tokens == 2600
    with pytest.raises(ConfigError, match="--real"):
        demo_config(parser.parse_args(["--real", "--model", str(smollm2_gguf), "--out", "x"]))
