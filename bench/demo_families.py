"""Why numeric and multiple-choice questions fail in a demo run: each reasoning step scored on its own.

    python -m bench.demo_families runs/demo [--stages sft,phase1,phase2]

The gold chain of a synthetic question is a fixed sequence of steps (``longrl/data/synth.py``), so the
held-out responses of a demo run (``stages/<stage>/heldout_predictions.jsonl``) can be checked step by step
against the held-out samples (``data/heldout_*.jsonl``):

- mcq (``<fact>. Option X is V. Therefore, the answer is X.``): the response wrote the gold fact; it wrote an
  ``Option X is V`` line; V is the right value; X is the letter V has in the listing (the letter step, given
  the value the response chose); the final letter is right. Chance for the final letter is 25%.
- numeric (``<a's coins>. <b's coins>. a op b = v.``): both operand facts are right; an ``a op b = v`` line was
  written; v is the right result of the a and b it wrote (the arithmetic step alone); the final answer is right
  (guessing scores a few %; ratio answers cluster at 2-4, and the most common answer of each operation scores
  14% on the demo's held-out sets).

A step that is right far above chance while the next one stays at chance locates what the model did not learn.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from longrl.data.records import DocQASample
from longrl.pipeline.data import read_heldout

OPTION = re.compile(r"Option ([A-D]) is (\w+)")
ARITH = re.compile(r"(\d+) ([-+/]) (\d+) = (\d+)")


def _load(run: Path) -> dict[str, DocQASample]:
    samples = {s.id: s for items in read_heldout(run / "data").values() for s in items}
    if not samples:
        raise SystemExit(f"no held-out samples in {run / 'data'} (is {run} a demo run directory?)")
    return samples


def step_counts(run: str | Path, stage: str) -> Counter:
    """Counts of each step's success over the stage's mcq and numeric held-out responses."""
    run = Path(run)
    samples = _load(run)
    preds = run / "stages" / stage / "heldout_predictions.jsonl"
    if not preds.is_file():
        raise SystemExit(f"{preds} is missing: stage {stage!r} was not evaluated")
    c: Counter = Counter()
    for line in preds.read_text().splitlines():
        r = json.loads(line)
        s = samples.get(r["id"])
        if s is None or r["family"] not in ("mcq", "numeric"):
            continue
        ev, resp = s.metadata["evidence"], r["response"]
        if r["family"] == "mcq":
            opts = s.metadata["options"]
            value = opts["ABCD".index(s.answers[0])]
            c["mcq"] += 1
            c["mcq fact"] += ev[0] in resp
            m = OPTION.search(resp)
            if m:
                c["mcq option line"] += 1
                c["mcq value right"] += m.group(2) == value
                if m.group(2) in opts:
                    c["mcq value listed"] += 1
                    c["mcq letter of its value"] += "ABCD"[opts.index(m.group(2))] == m.group(1)
            c["mcq correct"] += r["acc"] >= 1.0
        else:
            c["numeric"] += 1
            c["numeric both facts"] += ev[0] in resp and ev[1] in resp
            m = ARITH.search(resp)
            if m:
                a, op, b, v = m.groups()
                a, b, v = int(a), int(b), int(v)
                c["numeric arithmetic line"] += 1
                c["numeric arithmetic right"] += v == {"+": a + b, "-": a - b, "/": a // b if b else -1}[op]
            c["numeric correct"] += r["acc"] >= 1.0
    return c


ROWS = [  # (label, numerator, denominator)
    ("mcq: wrote the gold fact", "mcq fact", "mcq"),
    ("mcq: wrote an `Option X is V` line", "mcq option line", "mcq"),
    ("mcq: V is the right value (of those lines)", "mcq value right", "mcq option line"),
    ("mcq: X is V's letter (of lines whose V is an option; chance 25%)", "mcq letter of its value", "mcq value listed"),
    ("mcq: final letter right (chance 25%)", "mcq correct", "mcq"),
    ("numeric: wrote both operand facts", "numeric both facts", "numeric"),
    ("numeric: wrote an `a op b = v` line", "numeric arithmetic line", "numeric"),
    ("numeric: v = a op b for its own a, b (of those lines)", "numeric arithmetic right", "numeric arithmetic line"),
    ("numeric: final answer right (guessing: a few %, up to 14%)", "numeric correct", "numeric"),
]


def markdown(run: str | Path, stages: list[str]) -> str:
    counts = {st: step_counts(run, st) for st in stages}
    lines = ["| step | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for label, num, den in ROWS:
        cells = []
        for st in stages:
            c = counts[st]
            cells.append(f"{100 * c[num] / c[den]:.0f}% ({c[num]}/{c[den]})" if c[den] else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a demo run directory (longrl demo --out RUN)")
    p.add_argument("--stages", default="sft,phase1,phase2", help="comma-separated evaluated stages")
    args = p.parse_args(argv)
    print(markdown(args.run, [s for s in args.stages.split(",") if s]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
