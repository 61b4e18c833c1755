"""`longrl judge`: judge a JSONL file of (question, prediction, gold) and write one verdict per line.

Input lines: ``{"question": ..., "prediction": ..., "gold": "..." | ["...", ...]}`` (other fields are
copied through). Output lines add ``"verdict": true | false | null`` (null = no verdict; several golds:
any YES is a YES). A summary with the judge metrics goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longrl.config import ConfigError, load_config
from longrl.data.readers import read_json_objects
from longrl.data.records import RecordError
from longrl.rewards.hybrid import judge_against_golds
from longrl.rewards.judge import make_judge


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="inp", required=True, help="JSONL of {question, prediction, gold}")
    parser.add_argument("--out", required=True, help="JSONL written with a 'verdict' field per line")
    parser.add_argument("--config", default=None, help="YAML config; its reward.judge section is used")
    parser.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL (sets backend openai)")
    parser.add_argument("--model", default=None, help="model name to send to the endpoint")
    parser.add_argument("--model-path", default=None,
                        help="local model directory or .gguf file judged in-process (sets backend hf)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. reward.judge.concurrency=4 (repeatable)")


def _read_pairs(path: Path) -> list[dict]:
    """The rows of ``path`` with their golds as a list in ``_golds``; RecordError naming the file, the
    record (1-based, blank lines not counted) and the field of the first bad one."""
    if not path.is_file():
        raise RecordError(str(path), 0, "<file>", "file not found")
    rows = []
    for n, row in enumerate(read_json_objects(path), 1):
        for name in ("question", "prediction"):
            if not isinstance(row.get(name), str):
                raise RecordError(str(path), f"record {n}", name, "missing or not a string")
        gold = row.get("gold")
        if isinstance(gold, str):
            gold = [gold]
        if not isinstance(gold, list) or not gold or not all(isinstance(g, str) for g in gold):
            raise RecordError(str(path), f"record {n}", "gold", "must be a string or a non-empty list of strings")
        rows.append({**row, "_golds": gold})
    return rows


def _judge_config(args):
    overrides = list(args.overrides)
    if args.model_path and (args.endpoint or args.model):
        raise ConfigError("--model-path", "use either --model-path or --endpoint/--model, not both")
    if args.model_path:
        overrides += ["reward.judge.backend=hf", f"reward.judge.model={json.dumps(args.model_path)}"]
    elif args.endpoint or args.model:
        overrides.append("reward.judge.backend=openai")
        if args.endpoint:
            overrides.append(f"reward.judge.endpoint={json.dumps(args.endpoint)}")
        if args.model:
            overrides.append(f"reward.judge.model={json.dumps(args.model)}")
    cfg = load_config(args.config, overrides).reward.judge
    if cfg.backend == "none":
        raise ConfigError("reward.judge.backend", "no judge configured: pass --endpoint/--model, --model-path, "
                          "or a --config whose reward.judge.backend is 'openai' or 'hf'")
    return cfg


def run(args) -> int:
    cfg = _judge_config(args)
    rows = _read_pairs(Path(args.inp))
    judge = make_judge(cfg)
    verdicts = judge_against_golds(judge, [(r["question"], r["prediction"], r["_golds"]) for r in rows])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row, verdict in zip(rows, verdicts):
            row = {k: v for k, v in row.items() if k != "_golds"}
            f.write(json.dumps({**row, "verdict": verdict}, ensure_ascii=False) + "\n")
    n_none = sum(v is None for v in verdicts)
    summary = {"rows": len(rows), "yes": sum(v is True for v in verdicts), "no": sum(v is False for v in verdicts),
               "no_verdict": n_none, **judge.metrics()}
    print(json.dumps(summary), file=sys.stderr)
    return 1 if rows and n_none == len(rows) else 0
