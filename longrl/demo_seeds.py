"""``longrl demo --seeds 0,1,2``: the demo once per seed, and one table that says whether its bar held on each.

Each seed is an ordinary demo run in ``<out>/seed<S>`` (resumable like any other: re-running the same
command skips the finished seeds' stages). Afterwards ``<out>/seeds.md`` (also printed) holds, per seed,
held-out accuracy after SFT and after every RL phase, the RL gain, the last phase's gain on the longest
documents, the final accuracy per question family, the wall time, and whether the demo's bar held:
RL >= SFT + ``bar_points``, the last phase raised accuracy on the longest documents, and the run took at
most ``bar_minutes``. A mean and standard deviation row closes the table.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from longrl.config import ConfigError
from longrl.pipeline import percent

CHANCE = {"mcq": "25% (one of four letters)",
          "numeric": "a few % (answers spread over 1-80, but ratio answers cluster at 2-4: the most common answer "
                     "of each operation scores 14% on the demo's held-out sets)"}
"""What guessing scores per family, stated under the table."""


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ConfigError naming ``--seeds`` on anything else."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("--seeds", f"must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds", f"must name at least one seed, each once, got {text!r}")
    return seeds


def run_seeds(seeds: Sequence[int], out: str | Path, run_one: Callable[[int, Path], int],
              bar_points: float = 10.0, bar_minutes: float = 15.0) -> tuple[int, str]:
    """``run_one(seed, run_dir)`` for every seed (stopping at the first failure), then the table.
    Returns (exit code, markdown) and writes the markdown to ``<out>/seeds.md``."""
    out = Path(out)
    for seed in seeds:
        rc = run_one(seed, out / f"seed{seed}")
        if rc != 0:
            return rc, f"seed {seed} failed (exit code {rc}); see {out / f'seed{seed}'}"
    summaries = [json.loads((out / f"seed{s}" / "report" / "summary.json").read_text()) for s in seeds]
    text = seeds_markdown(summaries, bar_points, bar_minutes)
    (out / "seeds.md").write_text(text)
    return 0, text


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def seeds_markdown(summaries: Sequence[dict[str, Any]], bar_points: float = 10.0, bar_minutes: float = 15.0) -> str:
    """The per-seed table of ``report/summary.json`` files (see the module docstring)."""
    figs = [s["verdict"] for s in summaries]
    if any(f is None for f in figs):
        raise ValueError("a seed's report has no verdict (no RL stage was evaluated)")
    phases, longest = figs[0]["phases"], figs[0].get("longest", "")
    fams = sorted({fam for f in figs for fam in f.get("families", {})})
    head = (["seed", figs[0]["start"].upper(), *phases, "RL gain", f"{longest}-token docs, last phase"]
            + [f"{fam} (final)" for fam in fams] + ["wall", "bar"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cols: dict[str, list[float]] = {}
    held = 0
    for s, f in zip(summaries, figs):
        gain = f["final"] - f["base"]
        long_gain = f.get("long_after", 0.0) - f.get("long_before", 0.0)
        minutes = s["wall_s"] / 60
        ok = gain * 100 >= bar_points and long_gain > 0 and minutes <= bar_minutes
        held += ok
        values = {"base": f["base"], **{p: f["stages"][p] for p in phases}, "gain": gain, "long": long_gain,
                  **{fam: f.get("families", {}).get(fam, float("nan")) for fam in fams}}
        for k, v in values.items():
            cols.setdefault(k, []).append(v)
        cols.setdefault("minutes", []).append(minutes)
        misses = [m for m, bad in (("gain", gain * 100 < bar_points), ("long docs", long_gain <= 0),
                                   ("time", minutes > bar_minutes)) if bad]
        resumed = "*" if s.get("stages_skipped") else ""
        cells = [str(s["seed"]), percent(f["base"]), *(percent(f["stages"][p]) for p in phases), _points(gain),
                 f"{percent(f.get('long_before', 0))} -> {percent(f.get('long_after', 0))} ({_points(long_gain)})",
                 *(percent(values[fam]) for fam in fams), f"{minutes:.1f} min{resumed}",
                 "held" if ok else "missed: " + ", ".join(misses)]
        lines.append("| " + " | ".join(cells) + " |")

    def mean_sd(key: str, fmt: Callable[[float], str]) -> str:
        v = cols[key]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{fmt(statistics.fmean(v))} ± {100 * sd:.1f}" if key != "minutes" else \
            f"{statistics.fmean(v):.1f} ± {sd:.1f} min"

    lines.append("| mean ± sd | " + " | ".join(
        [mean_sd("base", percent), *(mean_sd(p, percent) for p in phases), mean_sd("gain", _points),
         mean_sd("long", _points), *(mean_sd(fam, percent) for fam in fams), mean_sd("minutes", str),
         f"{held} of {len(summaries)}"]) + " |")
    n = figs[0]["n"]
    notes = [f"\nHeld-out accuracy (%) on {n} questions per stage. Bar: RL >= {figs[0]['start'].upper()} + "
             f"{bar_points:g} points, the last phase raises accuracy on the longest documents, at most "
             f"{bar_minutes:g} minutes per seed (wall time of the seed's run, "
             f"{summaries[0].get('threads', '?')} torch thread(s))."]
    if any(s.get("stages_skipped") for s in summaries):
        notes.append("\\* this seed's last invocation resumed a run and skipped finished stages, so its wall time "
                     "covers only the rest; run it into a fresh folder to time it.")
    chance = [f"{fam} {CHANCE[fam]}" for fam in fams if fam in CHANCE]
    if chance:
        notes.append("Chance level: " + "; ".join(chance) + ".")
    return "\n".join(lines + notes) + "\n"
