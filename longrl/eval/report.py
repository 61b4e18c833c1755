"""Reports: per-sample JSONL, a summary JSON and a Markdown table in the layout of the paper's Table 4.

All figures in the summary and the table are percentages. ``score`` is the paper's metric, the mean
over questions and samples (avg@k) of max(rule metric, judge verdict); ``rule`` and ``judge`` are the
two halves alone. Failed generations stay in every denominator.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from longrl.eval.benchmarks import BENCHMARKS, get_benchmark
from longrl.eval.metrics import avg_at_k, mean_pass_at_k, pass_k_values


def _pct(x: float) -> float:
    return round(100.0 * x, 2)


def _by_question(records: list[dict[str, Any]], field: str) -> list[list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        value = r[field] if field in ("score", "rule") else r["metrics"][field]
        groups[r["id"]].append(float(value))
    return list(groups.values())


def _judge_by_question(records: list[dict[str, Any]]) -> list[list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        groups[r["id"]].append(1.0 if r["judge"] is True else 0.0)
    return list(groups.values())


def summarize_benchmark(records: list[dict[str, Any]], judged: bool) -> dict[str, Any]:
    """Figures for one benchmark's scored records (all k samples of every question)."""
    bench = get_benchmark(records[0]["benchmark"])
    scores = _by_question(records, "score")
    n = min(len(s) for s in scores)
    out: dict[str, Any] = {
        "n_questions": len(scores), "n_samples": len(records), "k": n,
        "score": _pct(avg_at_k(scores)), "rule": _pct(avg_at_k(_by_question(records, "rule"))),
        "judge": _pct(avg_at_k(_judge_by_question(records))) if judged else None,
    }
    out.update({m: _pct(avg_at_k(_by_question(records, m))) for m in bench.metric_names})
    out.update({f"pass@{k}": _pct(mean_pass_at_k(scores, k)) for k in pass_k_values(n)})
    statuses = defaultdict(int)
    for r in records:
        statuses[r["judge_status"]] += 1
    thinking = [r["thinking_tokens"] for r in records if r.get("thinking_tokens") is not None]
    out.update({
        "failed": sum(r["failed"] for r in records),
        "no_answer": sum(1 for r in records if not r["pred"] and not r["failed"]),
        "missing_think": sum(1 for r in records if not r["has_think"] and not r["failed"]),
        "truncated_prompts": sum(1 for r in records if r.get("truncated")),
        "finish_length": sum(1 for r in records if r.get("finish_reason") == "length"),
        "judge_no_verdict": statuses["no_verdict"] if judged else 0,
        "judge_status": dict(statuses) if judged else {},
        "mean_thinking_tokens": round(sum(thinking) / len(thinking), 1) if thinking else None,
    })
    return out


def summarize(records: list[dict[str, Any]], judged: bool) -> dict[str, Any]:
    """{'benchmarks': {name: figures}, 'average': {score, rule, judge}} over the benchmarks present."""
    by_bench: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_bench[r["benchmark"]].append(r)
    order = [b for b in BENCHMARKS if b in by_bench]
    per = {b: summarize_benchmark(by_bench[b], judged) for b in order}
    avg = {key: round(sum(per[b][key] for b in order) / len(order), 2) if order and (judged or key != "judge")
           else None for key in ("score", "rule", "judge")}
    return {"benchmarks": per, "average": avg,
            "failed": sum(p["failed"] for p in per.values()),
            "n_samples": sum(p["n_samples"] for p in per.values())}


SAMPLE_FIELDS = ("benchmark", "id", "sample", "question", "answers", "response", "finish_reason", "failed",
                 "error", "prompt_tokens", "truncated", "completion_tokens", "has_think", "thinking_chars",
                 "thinking_tokens", "pred", "metrics", "rule", "judge", "judge_status", "score", "turns")


def write_samples(records: list[dict[str, Any]], path: str | Path) -> None:
    """Per-sample JSONL: response, thinking length, extracted answer, every metric, judge verdict."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({k: r[k] for k in SAMPLE_FIELDS if k in r}, ensure_ascii=False) + "\n")


def load_reference(path: str | Path) -> dict[str, Any]:
    """Reference YAML: ``{source: str, models: {name: {benchmark: score, ...}}}``."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    models = data.get("models")
    if not isinstance(models, dict):
        raise ValueError(f"{path}: expected a 'models' mapping of model -> {{benchmark: score}}")
    for name, row in models.items():
        unknown = set(row) - set(BENCHMARKS) - {"avg"}
        if unknown:
            raise ValueError(f"{path}: model {name!r} has unknown benchmark(s) {sorted(unknown)}")
    return data


def _cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _row(label: str, values: dict[str, float | None], cols: list[str]) -> str:
    cells = [values.get(b) for b in cols]
    known = [c for c in cells if c is not None]
    avg = sum(known) / len(known) if known and len(known) == len(cells) else None
    return "| " + " | ".join([label] + [_cell(c) for c in cells] + [_cell(avg)]) + " |"


def markdown_table(summary: dict[str, Any], model: str, reference: dict[str, Any] | None = None) -> str:
    """Table 4 layout: one column per benchmark present and their average; our score, rule-only and
    judge-only rows, then reference rows (their average recomputed over the same columns)."""
    cols = list(summary["benchmarks"])
    head = "| Model | " + " | ".join(get_benchmark(b).title for b in cols) + " | Avg. |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    per = summary["benchmarks"]
    lines.append(_row(f"{model} (max(rule, judge))", {b: per[b]["score"] for b in cols}, cols))
    lines.append(_row(f"{model} (rule only)", {b: per[b]["rule"] for b in cols}, cols))
    if any(per[b]["judge"] is not None for b in cols):
        lines.append(_row(f"{model} (judge only)", {b: per[b]["judge"] for b in cols}, cols))
    for name, row in ((reference or {}).get("models") or {}).items():
        lines.append(_row(f"{name} (reported)", {b: row.get(b) for b in cols}, cols))
    notes = [f"k = {max(per[b]['k'] for b in cols)} samples per question (avg@k); failed generations "
             f"count as wrong: {summary['failed']} of {summary['n_samples']}."]
    if reference and reference.get("source"):
        notes.append(f"Reference: {reference['source']}")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_reports(records: list[dict[str, Any]], out_dir: str | Path, model: str, judged: bool,
                  reference: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write samples.jsonl, summary.json and table.md under ``out_dir``; returns the summary."""
    out = Path(out_dir)
    write_samples(records, out / "samples.jsonl")
    summary = {"model": model, **summarize(records, judged), **(extra or {})}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    (out / "table.md").write_text(markdown_table(summary, model, reference))
    return summary
