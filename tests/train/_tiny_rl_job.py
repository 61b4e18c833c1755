"""A tiny RL job run as a real process by the resume and multi-process tests.

Usage: ``python _tiny_rl_job.py MODEL_DIR RUN_DIR [key=value ...]`` (also under ``accelerate launch``).
The task: score = fraction of the completion's tokens whose id is a multiple of 4 (a quarter of the
vocabulary), acc = score >= 0.5. Writes ``RUN_DIR/final`` (the trained model).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from longrl.config import load_config
from longrl.curriculum.phases import PhaseSampler
from longrl.data.records import DocQASample

BASE = [
    "rl.steps=6", "rl.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=6",
    "reward.overlong.buffer_tokens=2", "rl.optim.lr=0.01", "rl.micro_token_budget=200",
    "logging.progress=false", "logging.tensorboard=false", "save_every=1", "keep_checkpoints=2",
    "rl.dynamic_sampling.max_rounds=2", "logging.rollout_samples_every=2",
]


@dataclass
class Score:
    score: float
    acc: float
    pred: str | None


class QuarterVocabReward:
    """Rewards completions made of token ids divisible by 4 (needs the tokenizer to see ids)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples, responses):
        out = []
        for text in responses:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            score = sum(1 for i in ids if i % 4 == 0) / max(1, len(ids))
            out.append(Score(score, float(score >= 0.5), text))
        return out


def make_samples(n: int = 8) -> list[DocQASample]:
    return [DocQASample(id=f"q{i}", source="toy", task="qa", document=f"The river Lumen flows through Norwick {i}.",
                        question="Where does the river flow?", answers=["Norwick"]) for i in range(n)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_metrics(run_dir) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    import json
    from pathlib import Path

    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_steps(one, two) -> int:
    """Two runs of the job took the same steps: equal rewards and token counts, grad norms within 1e-4
    relative, an update on the same steps (a step with no informative group logs no loss/* keys on both
    sides alike). Returns the number of steps that made an update."""
    import pytest

    updates = 0
    for m1, m2 in zip(run_metrics(one), run_metrics(two), strict=True):
        assert m1["reward/mean"] == m2["reward/mean"]
        assert ("loss/active_tokens" in m1) == ("loss/active_tokens" in m2)
        if "loss/active_tokens" in m1:
            updates += 1
            assert m1["loss/active_tokens"] == m2["loss/active_tokens"]
            assert m1["actor/grad_norm"] == pytest.approx(m2["actor/grad_norm"], rel=1e-4)
    return updates


def main(argv: list[str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longrl.train.rl import train_rl
    from longrl.train.runtime import exit_distributed

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    model_dir, run_dir, overrides = argv[0], argv[1], argv[2:]
    cfg = load_config(None, BASE + overrides)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    sampler = PhaseSampler(make_samples(), batch_size=cfg.rl.prompts_per_step, seed=cfg.seed)
    train_rl(model, tokenizer, sampler, QuarterVocabReward(tokenizer), cfg, run_dir=run_dir)
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    print(f"job done: rank {dist.get_rank() if world > 1 else 0} of world_size={world}", flush=True)
    exit_distributed(0)   # as `longrl` does under a launcher: no teardown abort after the work is done


if __name__ == "__main__":
    main(sys.argv[1:])
