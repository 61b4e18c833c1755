"""`longrl eval --agent memory` end to end: in process and against a real `transformers serve`; every
turn saved with the prediction, no turn over the window, resume from the cache, window failures counted."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import AutoTokenizer

from longrl.config import EvalConfig
from longrl.eval.cli import main
from longrl.eval.harness import CACHE_FILE, load_samples

WINDOW = 600


def _data_dir(shared_samples_dir: Path, tmp_path: Path, chars: int = 1400) -> Path:
    """Two real HotpotQA records (LongBench format) with their context cut to ``chars`` characters."""
    rows = [json.loads(x) for x in (shared_samples_dir / "longbench_hotpotqa.jsonl").read_text().splitlines()[:2]]
    for r in rows:
        r["context"] = r["context"][:chars]
    d = tmp_path / "data"
    d.mkdir()
    (d / "hotpotqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--benchmarks", "hotpotqa", "--data-dir", str(data), "--k", "2", "--max-input-tokens", str(WINDOW),
            "--max-new-tokens", "6", "--no-judge", "--out", str(out), "--agent", "memory",
            "--set", "agent.chunk_tokens=128", "--set", "agent.memory_tokens=12", *extra]


def _check_records(out: Path, data: Path, tok) -> list[dict]:
    recs = [json.loads(x) for x in (out / CACHE_FILE).read_text().splitlines()]
    docs = {s.id: s.document for s in load_samples(EvalConfig(benchmarks=["hotpotqa"], data_dir=str(data)))["hotpotqa"]}
    assert len(recs) == 4 and not any(r["error"] for r in recs)
    for r in recs:
        n_doc = len(tok.encode(docs[r["id"]].strip(), add_special_tokens=False))
        assert n_doc > WINDOW  # the document alone would not fit the window
        kinds = [t["kind"] for t in r["turns"]]
        assert kinds == ["memory"] * math.ceil(n_doc / 128) + ["answer"]
        assert all(0 < t["prompt_tokens"] <= WINDOW for t in r["turns"])
        assert r["prompt_tokens"] == max(t["prompt_tokens"] for t in r["turns"])
        assert r["turns"][-1]["output"] == r["response"] and r["completion_tokens"] == r["turns"][-1]["completion_tokens"]
    return recs


def test_in_process_agent_eval_saves_every_turn_and_resumes(tiny_model_dir, shared_samples_dir, tmp_path):
    data, out = _data_dir(shared_samples_dir, tmp_path), tmp_path / "agent"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert main(_args(data, out, "--model-path", str(tiny_model_dir))) == 0
    _check_records(out, data, tok)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"]["generated"] == 4 and summary["failed"] == 0
    assert json.loads((out / "generations.meta.json").read_text())["agent"]["chunk_tokens"] == 128
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("turns" in r and "metrics" in r for r in rows)
    # a re-run generates nothing; other agent settings in the same directory are refused
    assert main(_args(data, out, "--model-path", str(tiny_model_dir))) == 0
    assert json.loads((out / "summary.json").read_text())["generation"]["cached"] == 4
    assert main(_args(data, out, "--model-path", str(tiny_model_dir), "--set", "agent.plan=true")) == 2
    # the single-turn baseline cannot reuse the agent's directory either
    baseline = _args(data, out, "--model-path", str(tiny_model_dir))
    baseline[baseline.index("--agent") + 1] = "none"
    assert main(baseline) == 2


def test_turns_that_cannot_fit_the_window_are_counted_failures(tiny_model_dir, shared_samples_dir, tmp_path):
    data, out = _data_dir(shared_samples_dir, tmp_path), tmp_path / "agent"
    args = _args(data, out, "--model-path", str(tiny_model_dir), "--set", "agent.chunk_tokens=300")
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"]["failed"] == 4 and summary["failed"] == 4
    recs = [json.loads(x) for x in (out / CACHE_FILE).read_text().splitlines()]
    assert all("WindowError" in r["error"] and "agent.chunk_tokens" in r["error"] for r in recs)


def test_agent_eval_against_transformers_serve(openai_server, tiny_model_dir, shared_samples_dir, tmp_path):
    base, _ = openai_server(tiny_model_dir)
    data, out = _data_dir(shared_samples_dir, tmp_path), tmp_path / "served"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = _args(data, out, "--endpoint", base, "--model", str(tiny_model_dir), "--tokenizer", str(tiny_model_dir),
                 "--set", "rollout.prompt_format=text", "--set", "rollout.split_n=true", "--concurrency", "2")
    assert main(args) == 0
    _check_records(out, data, tok)
    assert json.loads((out / "summary.json").read_text())["generation"]["generated"] == 4
