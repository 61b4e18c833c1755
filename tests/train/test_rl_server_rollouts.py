"""RL with `rollout.backend: openai`: rollouts come from a real `transformers serve`, which reloads
the policy the trainer saves after every step."""

from __future__ import annotations

import json
import shutil

import torch
from _tiny_rl_job import BASE, QuarterVocabReward, make_samples
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.config import load_config
from longrl.curriculum.phases import PhaseSampler
from longrl.rollout.openai import OpenAIGenerator
from longrl.train.rl import build_generator, train_rl


def test_rl_steps_with_server_rollouts_and_weight_sync(tiny_model_dir, openai_server, tmp_path):
    # The server serves the sync directory, so every reload reads the trainer's latest weights.
    sync_dir = tmp_path / "sync"
    shutil.copytree(tiny_model_dir, sync_dir)
    base_url, _ = openai_server(sync_dir)
    cfg = load_config(None, BASE + [
        "reward.overlong.enabled=false", "rl.steps=2", "rl.prompts_per_step=2", "rollout.group_size=3",
        "rollout.max_new_tokens=4", "rl.optim.lr=0.05", "save_every=0", "rl.dynamic_sampling.enabled=false",
        "rollout.backend=openai", f"rollout.endpoint={base_url}", f"rollout.model={sync_dir}",
        "rollout.prompt_format=text", "rollout.split_n=true", f"rollout.sync_dir={sync_dir}",
        "rollout.extra_body={generation_config: '{\"do_sample\": true}'}",
    ])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert isinstance(build_generator(cfg, model, tok), OpenAIGenerator)
    before = load_file(str(sync_dir / "model.safetensors"))
    sampler = PhaseSampler(make_samples(), batch_size=cfg.rl.prompts_per_step, seed=cfg.seed)
    result = train_rl(model, tok, sampler, QuarterVocabReward(tok), cfg, run_dir=tmp_path / "run")

    assert result.steps == 2
    hist = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and all(h["response_length/mean"] > 0 for h in hist)
    after = load_file(str(sync_dir / "model.safetensors"))
    # the trainer pushed its updated weights to the directory the server reloads from
    assert any(not torch.equal(before[k], after[k]) for k in before)
    trained = model.state_dict()
    assert all(torch.equal(after[k], trained[k]) for k in after)
