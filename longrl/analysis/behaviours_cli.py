"""`longrl behaviours`: count grounding, subgoal setting, backtracking and verification in saved responses.

Input: any jsonl with a response field: rollout samples saved by training (``rollout_samples.jsonl``:
``step``, ``response``, ``acc``), held-out or eval predictions (``heldout_predictions.jsonl``), or your
own rows. Each ``--in PATH[:LABEL]`` is one stage (LABEL defaults to the file's folder name, so
``runs/x/stages/sft/heldout_predictions.jsonl`` is stage ``sft``); a row's own ``stage`` or ``phase``
field wins. Output in ``--out``: ``counts.jsonl`` (every row with its ``counts``, or null = no
verdict), ``behaviours.json`` (per stage, and per stage and step), ``behaviours.md`` (the per-stage
table) and, when rows carry a ``step``, ``behaviours.png`` (counts over steps with stage boundaries,
next to accuracy). The rule counter is the default; ``--endpoint/--model`` or ``--model-path`` use an
LLM judge instead (see :mod:`longrl.analysis.behaviours`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longrl.analysis.behaviours import (
    aggregate,
    count_rows,
    make_behaviour_judge,
    markdown_table,
    plot_behaviours,
    read_jsonl,
)
from longrl.data.records import RecordError
from longrl.rewards.judge_cli import _judge_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="inputs", action="append", required=True, metavar="PATH[:LABEL]",
                        help="jsonl of responses, one stage per file (repeatable)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--field", default="response", help="the field holding the response text")
    parser.add_argument("--config", default=None, help="YAML config; its reward.judge section is the judge")
    parser.add_argument("--endpoint", default=None, help="judge with this OpenAI-compatible base URL")
    parser.add_argument("--model", default=None, help="model name to send to the endpoint")
    parser.add_argument("--model-path", default=None, help="judge with this local model in-process")
    parser.add_argument("--max-response-chars", type=int, default=8000,
                        help="judge path: reasoning longer than this is cut before it is sent")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. reward.judge.cache_path=cache.sqlite (repeatable)")


def split_input(text: str) -> tuple[Path, str]:
    """'PATH' or 'PATH:LABEL' (a label has no '/'); the default label is the file's folder name."""
    path, sep, label = text.rpartition(":")
    if sep and label and "/" not in label and not Path(text).exists():
        return Path(path), label
    return Path(text), Path(text).resolve().parent.name


def read_inputs(inputs: list[str]) -> list[dict]:
    rows = []
    for text in inputs:
        path, label = split_input(text)
        if not path.is_file():
            raise RecordError(str(path), 0, "<file>", "file not found")
        rows += [dict(r, stage=str(r.get("stage") or r.get("phase") or label), _file=str(path))
                 for r in read_jsonl(path)]
    return rows


def _judge(args):
    if not (args.endpoint or args.model or args.model_path or args.config):
        return None

    return make_behaviour_judge(_judge_config(args), args.max_response_chars)


def run(args: argparse.Namespace) -> int:
    rows = read_inputs(args.inputs)
    judge = _judge(args)
    counted = []
    for f in dict.fromkeys(r["_file"] for r in rows):
        counted += count_rows([r for r in rows if r["_file"] == f], args.field, judge, where=f)
    per_stage = aggregate(counted, ["stage"])
    stepped = [dict(r, phase=r["stage"]) for r in counted if isinstance(r.get("step"), int)]
    per_step = aggregate(stepped, ["phase", "step"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "counts.jsonl").open("w") as f:
        for r in counted:
            f.write(json.dumps({k: v for k, v in r.items() if k not in ("_file", "document")}, ensure_ascii=False,
                               default=str) + "\n")
    (out / "behaviours.json").write_text(json.dumps({"per_stage": per_stage, "per_step": per_step}, indent=1))
    table = markdown_table(per_stage) if per_stage else "(no responses)"
    (out / "behaviours.md").write_text(table + "\n")
    if per_step:
        plot_behaviours(per_step, out / "behaviours.png")
    print(table)
    n_none = sum(r["counts"] is None for r in counted)
    summary = {"responses": len(counted), "no_verdict": n_none, "counter": "judge" if judge else "rules",
               **(judge.metrics() if judge else {})}
    print(json.dumps(summary), file=sys.stderr)
    return 1 if counted and n_none == len(counted) else 0
