"""Training-dynamics plots from the ``metrics.jsonl`` files of consecutive RL phases (matplotlib, Agg).

Every phase's records are placed on one global step axis (phase 2 starts where phase 1 ended) and each
plot marks the phase boundaries with dashed lines, so the effect of a length transition is visible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLOTS: dict[str, tuple[str, list[str]]] = {
    "reward": ("Reward (mean over rollouts)", ["reward/mean"]),
    "accuracy": ("Rollout accuracy", ["reward/acc"]),
    "entropy": ("Policy entropy (nats/token)", ["actor/entropy"]),
    "response_length": ("Response length (tokens)", ["response_length/mean"]),
    "filtered_groups": ("Groups filtered by dynamic sampling (fraction)", ["sampling/filtered_fraction"]),
}
"""File stem -> (title, metric keys drawn)."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of one ``metrics.jsonl`` (torn or non-JSON lines skipped), sorted by step; ``null`` values
    (non-finite metrics, see :mod:`longrl.train.telemetry`) read as NaN."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            out.append({k: float("nan") if v is None else v for k, v in rec.items()})
    return sorted(out, key=lambda r: r["step"])


def filtered_fraction(rec: dict[str, Any]) -> float:
    """Dropped / generated groups of one step (0 when nothing was generated)."""
    kept = float(rec.get("sampling/kept_groups", 0.0)) + float(rec.get("sampling/surplus_groups", 0.0))
    dropped = float(rec.get("sampling/filtered_groups", 0.0))
    return dropped / (kept + dropped) if kept + dropped else 0.0


def join_phases(phases: list[tuple[str, list[dict[str, Any]]]]) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
    """Records on a global step axis (``global_step``, ``phase``) and each phase's (name, first step)."""
    rows, starts, offset = [], [], 0
    for name, records in phases:
        starts.append((name, offset))
        last = 0
        for rec in records:
            row = dict(rec, global_step=offset + int(rec["step"]), phase=name)
            row["sampling/filtered_fraction"] = filtered_fraction(rec)
            rows.append(row)
            last = max(last, int(rec["step"]))
        offset += last
    return rows, starts


def plot_dynamics(phases: list[tuple[str, list[dict[str, Any]]]], out_dir: str | Path) -> list[Path]:
    """One PNG per entry of :data:`PLOTS` in ``out_dir``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, starts = join_phases(phases)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (title, keys) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        for key in keys:
            pts = [(r["global_step"], r[key]) for r in rows if isinstance(r.get(key), int | float) and r[key] == r[key]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=key)
        for name, start in starts:
            ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
            ax.annotate(name, (start + 0.5, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                        xytext=(3, -12), textcoords="offset points")
        ax.set_title(title)
        ax.set_xlabel("RL step (all phases)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def plot_accuracy_by_stage(table: list[tuple[str, dict[str, Any]]], out_path: str | Path) -> Path:
    """Held-out accuracy per set after every stage (one line per document length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s, _ in table]
    sets = sorted(table[0][1]["sets"], key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)) if table else []
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for name in sets:
        ax.plot(stages, [100 * t["sets"][name]["acc"] for _, t in table], marker="o", label=f"{name} tokens")
    ax.plot(stages, [100 * t["acc"] for _, t in table], marker="s", color="black", label="all")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Held-out accuracy after each stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_path)


def save_figure(fig, out_path: str | Path) -> Path:
    """Lay out, write (making the folder) and close ``fig``; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
