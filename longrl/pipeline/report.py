"""What the pipeline prints and writes for people: stage events, the accuracy table, the behaviour report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from longrl.analysis.behaviours import read_jsonl, run_documents, write_stage_report
from longrl.pipeline.data import read_heldout
from longrl.pipeline.stages import StageEvent, phase_names, stage_dir, stage_names


def behaviour_report(cfg, out_dir: str | Path, plot_path: str | Path) -> dict[str, Any]:
    """:func:`write_stage_report` over a pipeline run directory: every stage's held-out predictions and
    every RL phase's rollout samples and metrics."""
    stages = [(n, stage_dir(cfg, n) / "heldout_predictions.jsonl") for n in stage_names(cfg)]
    stages = [(n, p) for n, p in stages if p.is_file()]
    phases = [(n, stage_dir(cfg, n)) for n in phase_names(cfg)]
    return write_stage_report(stages, phases, out_dir, plot_path, run_documents(Path(cfg.output_dir) / "data"))


def pool_line(summary: dict[str, Any]) -> str:
    keys = ("retro/pool_size", "retro/mean_difficulty", "retro/dropped_easy", "retro/dropped_input_budget",
            "retro/dropped_cap")
    return ", ".join(f"{k.split('/')[-1]}={summary[k]:.3g}" for k in keys if k in summary)


def pool_composition(stage: str, curriculum: dict[str, Any]) -> str:
    """Markdown: the retrospective pool a phase started with, by difficulty bin (the unsolved candidates
    of earlier phases, the pool kept from them, the pool samples the phase was served) and by family."""
    tr, end = curriculum.get("transition") or {}, curriculum.get("end") or {}
    pool = tr.get("retro/difficulty_hist")
    if not pool:
        return ""
    cand = tr.get("retro/candidate_hist") or [None] * len(pool)
    served = end.get("curriculum/retro_served_hist") or [None] * len(pool)
    n = len(pool)
    lines = [f"### Retrospective pool of {stage}", "",
             f"{tr.get('retro/pool_size', 0)} samples (mean difficulty {tr.get('retro/mean_difficulty', 0):.2f}) "
             f"kept from {sum(c for c in cand if c) or '?'} unsolved candidates of earlier phases (dropped: "
             f"{tr.get('retro/dropped_easy', 0)} solved or easy, {tr.get('retro/dropped_input_budget', 0)} over the "
             f"input budget, {tr.get('retro/dropped_output_budget', 0)} over the output budget, "
             f"{tr.get('retro/dropped_cap', 0)} beyond the cap, chosen at random); draws are in proportion to "
             f"difficulty = 1 - mean rollout accuracy.", "",
             "| difficulty | candidates | pool | served in " + stage + " |", "|---|---|---|---|"]
    for i in range(n):
        if not (pool[i] or cand[i] or served[i]):
            continue
        hi = "]" if i == n - 1 else ")"
        cells = ["-" if v is None else str(v) for v in (cand[i], pool[i], served[i])]
        lines.append(f"| [{i / n:.1f}, {(i + 1) / n:.1f}{hi} | " + " | ".join(cells) + " |")
    fams = {k.split("/", 2)[2]: v for k, v in tr.items() if k.startswith("retro/family/")}
    if fams:
        lines += ["", "Pool by question family: " + ", ".join(f"{f} {v}" for f, v in sorted(fams.items())) + "."]
    return "\n".join(lines) + "\n"


def percent(x: float) -> str:
    """A fraction as a percentage with one decimal; NaN (no questions) as '-'."""
    return "-" if x != x else f"{100 * x:.1f}"


def set_order(label: str) -> tuple:
    """Sort key of a held-out set label: numeric labels (document lengths) first, in increasing order."""
    return (0, int(label), label) if label.isdigit() else (1, 0, label)


def ordered_sets(table: dict[str, Any]) -> list[str]:
    """Set labels of an accuracy table, numeric labels (document lengths) in increasing order."""
    return sorted(table["sets"], key=set_order)


def markdown_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Held-out accuracy (%): one row per (document length, family), one column per stage."""
    first = rows[0][1]
    sets = ordered_sets(first)
    fams = sorted({f for _, t in rows for st in t["sets"].values() for f in st["families"]})
    head = ["documents", "family"] + [stage for stage, _ in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sets:
        label = f"{name} tokens" if name.isdigit() else name
        for fam in ["all", *fams]:
            cells = [label, f"**{fam}**" if fam == "all" else fam]
            for _, t in rows:
                st = t["sets"].get(name, {})
                cells.append(percent(st.get("acc", float("nan")) if fam == "all"
                                  else st.get("families", {}).get(fam, float("nan"))))
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("| **all** | **all** | " + " | ".join(percent(t["acc"]) for _, t in rows) + " |")
    per_set = ", ".join(f"{s}: {first['sets'][s]['n']}" for s in sets)
    lines.append(f"\n{first['n']} held-out generations per stage ({per_set}).")
    return "\n".join(lines)


DEPTH_PARTS = ("first third", "middle third", "last third")


def depth_table(cfg) -> str:
    """Markdown: held-out accuracy (%) by where the evidence lies in the document, per document length and stage.

    Only questions with one evidence paragraph (``metadata["evidence_depth"]`` of length 1: synthetic lookup
    and multiple-choice questions) count, binned by that paragraph's relative depth into thirds; '' when the
    run has no such question or no evaluated stage. This is the "lost in the middle" view of a length."""
    cells: dict[tuple[str, int], list[str]] = {}      # (set label, third) -> the ids of its questions
    for label, samples in read_heldout(Path(cfg.output_dir) / "data").items():
        for s in samples:
            depth = s.metadata.get("evidence_depth") or []
            if len(depth) == 1:
                cells.setdefault((label, min(int(depth[0] * 3), 2)), []).append(s.id)
    stages = [(n, stage_dir(cfg, n) / "heldout_predictions.jsonl") for n in stage_names(cfg)]
    accs = []                                          # per stage: (set label, id) -> its predictions' accuracies
    for n, p in stages:
        if p.is_file():
            by_question: dict[tuple[str, str], list[float]] = {}
            for r in read_jsonl(p):
                by_question.setdefault((r.get("set"), r.get("id")), []).append(float(r["acc"]))
            accs.append((n, by_question))
    if not cells or not accs:
        return ""
    lines = ["| documents | evidence in | questions | " + " | ".join(n for n, _ in accs) + " |",
             "|" + "---|" * (3 + len(accs))]
    for label, third in sorted(cells, key=lambda c: (set_order(c[0]), c[1])):
        ids = cells[label, third]
        row = []
        for _, acc in accs:
            got = [a for i in ids for a in acc.get((label, i), [])]
            row.append(percent(sum(got) / len(got) if got else float("nan")))
        doc = f"{label} tokens" if label.isdigit() else label
        lines.append(f"| {doc} | {DEPTH_PARTS[third]} | {len(ids)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


class progress_bar:
    """Context manager yielding ``advance(n)``; a rich progress bar when enabled, else a no-op."""

    def __init__(self, description: str, total: int, enabled: bool):
        self.description, self.total, self.enabled = description, total, enabled
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn())
        self._progress.start()
        task = self._progress.add_task(self.description, total=self.total)
        return lambda n: self._progress.update(task, advance=n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False


def print_event(ev: StageEvent) -> None:
    """Default stage logger for the CLI."""
    m = ev.manifest
    if ev.kind == "skip":
        print(f"[{ev.stage}] complete; skipped")
    elif ev.kind == "start":
        print(f"[{ev.stage}] starting from {m['input_model']}")
    elif ev.kind == "trained":
        print(f"[{ev.stage}] trained in {m['train_wall_s']:.0f}s")
        if m.get("curriculum", {}).get("transition"):
            print(f"[{ev.stage}] retrospective pool: {pool_line(m['curriculum']['transition'])}")
    elif ev.kind == "evaluated":
        t = m["eval"]
        sets = ", ".join(f"{k} tok {100 * v['acc']:.1f}%" for k, v in t["sets"].items())
        print(f"[{ev.stage}] held-out accuracy {100 * t['acc']:.1f}% ({sets}) in {m['eval_wall_s']:.0f}s")
