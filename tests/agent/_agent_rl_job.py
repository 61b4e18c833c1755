"""A tiny memory-agent RL job run as a real process by the resume test.

Usage: ``python _agent_rl_job.py MODEL_DIR RUN_DIR [key=value ...]``. Documents of ~90 tokens read in
32-token chunks (3 memory turns + the answer turn). The reward (a stand-in for the hybrid reward, which a
random tiny model never earns): fraction of the answer's token ids divisible by 4, acc = score >= 0.5.
Every generator call appends a line to ``RUN_DIR.calls`` (so the test can kill the job mid-trajectory).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from _tiny_rl_job import QuarterVocabReward, Score  # noqa: E402,F401  (the same stand-in reward as the RL job)

from longrl.config import load_config
from longrl.curriculum.phases import PhaseSampler
from longrl.data.records import DocQASample
from longrl.rollout.hf import HFGenerator

BASE = [
    "rl.steps=4", "rl.prompts_per_step=2", "rollout.group_size=3", "rollout.max_new_tokens=5",
    "reward.overlong.buffer_tokens=2", "rl.optim.lr=0.01", "rl.micro_token_budget=400",
    "logging.progress=false", "logging.tensorboard=false", "save_every=1", "keep_checkpoints=2",
    "rl.dynamic_sampling.max_rounds=2", "logging.rollout_samples_every=1", "agent.chunk_tokens=32",
    "agent.memory_tokens=4", "agent.memory_template='Q: $Q$ M: $MEM$ C: $CHUNK$'",
    "agent.answer_template='M: $MEM$ Q: $Q$ $FMT$'",
]


class LoggedGenerator(HFGenerator):
    def __init__(self, model, tokenizer, log_path: Path):
        super().__init__(model, tokenizer)
        self.log_path = log_path

    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0):
        with self.log_path.open("a") as f:
            f.write(f"{len(prompt_ids[0])} {n}\n")
        return super().generate(prompt_ids, n, max_new_tokens, temperature, top_p)


def make_samples(n: int = 6) -> list[DocQASample]:
    doc = " ".join(f"Person {j} lives in Maple." for j in range(4))
    return [DocQASample(id=f"q{i}", source="toy", task="qa", document=f"{doc} The river Lumen flows through Norwick {i}.",
                        question="Where does the river flow?", answers=["Norwick"]) for i in range(n)]


def main(argv: list[str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longrl.train.agent_rl import train_agent_rl

    model_dir, run_dir, overrides = argv[0], Path(argv[1]), argv[2:]
    cfg = load_config(None, BASE + overrides)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    sampler = PhaseSampler(make_samples(), batch_size=cfg.rl.prompts_per_step, seed=cfg.seed)
    gen = LoggedGenerator(model, tokenizer, run_dir.with_suffix(".calls"))
    train_agent_rl(model, tokenizer, sampler, QuarterVocabReward(tokenizer), cfg, run_dir=run_dir, generator=gen)


if __name__ == "__main__":
    main(sys.argv[1:])
