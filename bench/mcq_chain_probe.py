"""Can the demo's model learn the multiple-choice letter step at all? SFT on MCQ questions only, with the
gold reasoning chain in one of several orders, from a demo run's initial (copy + recall pretrained) model;
then greedy accuracy on the run's held-out MCQ questions.

    python -m bench.mcq_chain_probe runs/demo --variants base,after,enum,enumall --steps 300

Variants of the chain for "Where does Kalor live?" with options A. Amber, B. Maple, ...:
- ``base`` (the generator's): ``Kalor lives in Maple. Option B is Maple. Therefore, the answer is B.``
- ``after``: ``Kalor lives in Maple. Maple is option B. ...`` (value first, then its letter)
- ``enum``: ``Kalor lives in Maple. Option A is Amber. Option B is Maple. ...`` (options read in order
  until the value, each step a forward copy from the listing)
- ``enumall``: all four options read, then ``Maple is option B.``

``--steps`` x 16 MCQ examples (~64-token documents) at lr 1e-3, the demo's SFT settings; the demo's own SFT
sees 400 x 16 examples of which a quarter are MCQ, i.e. the same MCQ exposure as ``--steps 100``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.config import OptimConfig, SFTConfig
from longrl.data import synth
from longrl.data.prompt import chat_prompt_ids
from longrl.data.records import DocQASample
from longrl.data.tokens import token_counter
from longrl.eval.batched import generate_batch
from longrl.models import hf_progress_bars_off
from longrl.pipeline.data import read_heldout
from longrl.train.sft import train_sft

VARIANTS = ("base", "after", "enum", "enumall")


def chain(variant: str, fact: str, options: list[str], letter: str) -> list[str]:
    """The reasoning steps (before "Therefore, the answer is X.") of one MCQ question in ``variant``."""
    k = "ABCD".index(letter)
    value = options[k]
    read = [f"Option {'ABCD'[i]} is {options[i]}." for i in range(len(options))]
    return {"base": [fact, f"Option {letter} is {value}."], "after": [fact, f"{value} is option {letter}."],
            "enum": [fact, *read[:k + 1]], "enumall": [fact, *read, f"{value} is option {letter}."]}[variant]


def mcq_samples(variant: str, n: int, tokenizer) -> list[DocQASample]:
    out = synth.generate(n, 64, seed=0, families=["mcq"], split="sft", count_tokens=token_counter(tokenizer))
    for s in out:
        steps = chain(variant, s.metadata["evidence"][0], s.metadata["options"], s.answers[0])
        s.metadata["reasoning"] = " ".join(steps + [f"Therefore, the answer is {s.answers[0]}."])
    return out


def letter_accuracy(model, tokenizer, samples: list[DocQASample], batch: int = 16) -> float:
    right = 0
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        outs = generate_batch(model, tokenizer, [chat_prompt_ids(tokenizer, s) for s in chunk], 80, 0.0, 1.0, 0)
        for s, (ids, _) in zip(chunk, outs):
            found = re.findall(r"answer is ([A-D])\b", tokenizer.decode(ids, skip_special_tokens=True))
            right += bool(found) and found[-1] == s.answers[0]
    return right / len(samples)


def probe(run: str | Path, variant: str, steps: int, out: str | Path) -> dict[str, float]:
    """SFT a fresh copy of ``run``'s initial model on ``variant`` chains; accuracy per held-out set."""
    run = Path(run)
    init = run / "stages" / "init" / "final"
    if not init.is_dir():
        raise SystemExit(f"{init} is missing: run `longrl demo --out {run}` (at least its init stage) first")
    with hf_progress_bars_off():
        tok = AutoTokenizer.from_pretrained(init)
        model = AutoModelForCausalLM.from_pretrained(init)
    cfg = SFTConfig(steps=steps, batch_size=16, heldout_fraction=0.0, eval_every=0, prompt_loss_weight=0.5,
                    optim=OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=min(20, steps), schedule="cosine"))
    train_sft(model, tok, mcq_samples(variant, steps * 16, tok), cfg, run_dir=Path(out) / f"{variant}-{steps}",
              seed=0, save_every=0)
    model.eval()
    acc = {}
    for name, items in read_heldout(run / "data").items():
        held = [s for s in items if s.metadata.get("family") == "mcq"]
        if held:
            acc[name] = letter_accuracy(model, tok, held)
    return acc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a demo run directory with its init stage (longrl demo --out RUN)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default="runs/mcq_chain_probe", help="SFT run directories")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| chain | steps | " + " | ".join(["held-out set", "MCQ letter accuracy (greedy; chance 25%)"]) + " |")
    print("|---|---|---|---|")
    for v in [x for x in args.variants.split(",") if x]:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        for name, a in probe(args.run, v, args.steps, args.out).items():
            print(f"| {v} | {args.steps} | {name} tokens | {100 * a:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
