"""Harness: truncation, the generation cache, failures in the denominator, judge combination, and
end-to-end runs against a real `transformers serve` (including resume after SIGKILL) and in process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longrl.config import EvalConfig
from longrl.data.records import DocQASample
from longrl.eval.cli import main
from longrl.eval.harness import (
    CACHE_FILE,
    EndpointBackend,
    GenerationCache,
    build_messages,
    generate_all,
    load_samples,
    score_generations,
)
from longrl.eval.report import summarize

REPO = Path(__file__).resolve().parents[2]


def _sample(doc: str, q: str = "Where is the river Lumen?") -> DocQASample:
    return DocQASample(id="s1", source="hotpotqa", task="qa", document=doc, question=q, answers=["Norwick"])


def test_build_messages_middle_truncates_the_document_only(tiny_tokenizer):
    doc = "BEGINNING " + "The river Lumen flows through Norwick. " * 300 + " ENDING"
    msgs, n, truncated = build_messages(tiny_tokenizer, _sample(doc), max_input_tokens=200)
    text = msgs[0]["content"]
    assert truncated and n <= 205  # decode/re-encode at the cut may merge a few tokens differently
    assert "BEGINNING" in text and "ENDING" in text and "Where is the river Lumen?" in text
    assert text.endswith('Format your response as follows: "Therefore, the answer is (insert answer here)".')
    msgs2, n2, truncated2 = build_messages(tiny_tokenizer, _sample("short"), max_input_tokens=200)
    assert not truncated2 and "short" in msgs2[0]["content"] and n2 < 200
    with pytest.raises(ValueError, match="instructions and question alone"):
        build_messages(tiny_tokenizer, _sample(doc), max_input_tokens=10)


def test_cache_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / CACHE_FILE
    good = {"benchmark": "hotpotqa", "id": "a", "sample": 0, "response": "x", "error": ""}
    path.write_text(json.dumps(good) + "\n" + '{"benchmark": "hotpotqa", "id": "b", "sam')
    cache = GenerationCache(path)
    assert cache.done(("hotpotqa", "a", 0)) and not cache.done(("hotpotqa", "b", 0)) and cache.torn_lines == 1


def _cfg(shared_samples_dir, **kw) -> EvalConfig:
    base = dict(benchmarks=["hotpotqa", "frames"], data_dir=str(shared_samples_dir), k=2, limit=2,
                max_input_tokens=512, max_new_tokens=8, temperature=0.7, concurrency=2, timeout_s=5,
                max_retries=0, use_judge=False)
    base.update(kw)
    return EvalConfig(**base)


def test_failed_generations_are_reported_and_stay_in_the_denominator(tmp_path, shared_samples_dir, tiny_tokenizer):
    """A dead endpoint (connection refused, no retries): every sample failed, scored 0, counted."""
    cfg = _cfg(shared_samples_dir)
    samples = load_samples(cfg)
    dead = EndpointBackend("http://127.0.0.1:9/v1", "m", concurrency=2, timeout_s=2, max_retries=0)
    cache, counts = generate_all(samples, cfg, dead, tiny_tokenizer, tmp_path, {"model": "m"})
    assert counts == {"total": 8, "cached": 0, "generated": 0, "failed": 8, "torn_lines": 0}
    records = score_generations(samples, cache, cfg, tiny_tokenizer)
    summary = summarize(records, judged=False)
    assert summary["failed"] == 8 and summary["n_samples"] == 8
    hq = summary["benchmarks"]["hotpotqa"]
    assert hq["n_samples"] == 4 and hq["failed"] == 4 and hq["score"] == 0.0
    assert all(r["failed"] and "ConnectError" in r["error"] for r in records)


class _FakeJudge:
    """Says YES when the prediction contains 'Dylan', no verdict for 'ERR', else NO."""

    def judge_many(self, reqs):
        return [None if "ERR" in r.prediction else "Dylan" in r.prediction for r in reqs]

    def metrics(self):
        return {}


def test_score_is_max_of_rule_and_judge_with_both_reported():
    from longrl.eval.harness import scored_from_predictions

    rows = [{"benchmark": "hotpotqa", "id": str(i), "response": f"<think>.</think>Therefore, the answer is {p}",
             "answers": ["Bob Dylan"], "question": "Who?"}
            for i, p in enumerate(["Bob Dylan", "Robert Dylan", "George Harrison", "ERR"])]
    rows.append({"benchmark": "hotpotqa", "id": "4", "response": "no answer here", "answers": ["Bob Dylan"]})
    recs = scored_from_predictions(rows, EvalConfig(), judge=_FakeJudge())
    assert [r["rule"] for r in recs] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [r["judge"] for r in recs] == [True, True, False, None, None]
    assert [r["judge_status"] for r in recs] == ["yes", "yes", "no", "no_verdict", "no_answer"]
    assert [r["score"] for r in recs] == [1.0, 1.0, 0.0, 0.0, 0.0]
    s = summarize(recs, judged=True)["benchmarks"]["hotpotqa"]
    assert (s["score"], s["rule"], s["judge"], s["judge_no_verdict"]) == (40.0, 20.0, 40.0, 1)


def _args(shared_samples_dir, out, extra):
    return ["--benchmarks", "hotpotqa", "frames", "--data-dir", str(shared_samples_dir), "--limit", "2",
            "--k", "2", "--max-input-tokens", "512", "--max-new-tokens", "8", "--no-judge", "--out", str(out),
            *extra]


def test_end_to_end_against_transformers_serve(openai_server, tiny_model_dir, shared_samples_dir, tmp_path):
    base, _ = openai_server(tiny_model_dir)
    out = tmp_path / "run"
    args = _args(shared_samples_dir, out, ["--endpoint", base, "--model", str(tiny_model_dir),
                                           "--tokenizer", str(tiny_model_dir),
                                           "--reference", str(REPO / "configs/reference_qwenlong_l1.yaml")])
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"]["generated"] == 8 and summary["failed"] == 0
    assert summary["benchmarks"]["hotpotqa"]["n_questions"] == 2 and summary["benchmarks"]["frames"]["k"] == 2
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(set(r["metrics"]) == {"em", "sub_em", "f1"} for r in rows)
    assert all(isinstance(r["response"], str) and r["thinking_tokens"] is not None for r in rows)
    assert all(r["truncated"] for r in rows if r["benchmark"] == "hotpotqa")
    table = (out / "table.md").read_text()
    assert table.startswith("| Model | Frames | HQA | Avg. |")
    assert "| QwenLong-L1-32B (DAPO) (reported) | 70.1 | 83.0 | 76.5 |" in table
    # a second run finds everything cached and generates nothing
    assert main(args) == 0
    again = json.loads((out / "summary.json").read_text())["generation"]
    assert again["cached"] == 8 and again["generated"] == 0


def _cache_keys(path: Path) -> list[tuple]:
    keys = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        keys.append((r["benchmark"], r["id"], r["sample"]))
    return keys


def test_resume_after_sigkill_regenerates_nothing_done(openai_server, tiny_model_dir, shared_samples_dir, tmp_path):
    base, _ = openai_server(tiny_model_dir)
    out = tmp_path / "run"
    args = ["--benchmarks", "hotpotqa", "musique", "--data-dir", str(shared_samples_dir), "--limit", "2",
            "--k", "2", "--max-input-tokens", "512", "--max-new-tokens", "4", "--concurrency", "1",
            "--no-judge", "--out", str(out), "--endpoint", base, "--model", str(tiny_model_dir),
            "--tokenizer", str(tiny_model_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "longrl.eval.cli", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cache = out / CACHE_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if cache.exists() and len(_cache_keys(cache)) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished (or died) before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {(r["benchmark"], r["id"], r["sample"]): r["response"]
              for r in map(json.loads, [ln for ln in cache.read_text().splitlines() if ln.endswith("}")])}
    assert 2 <= len(before) < 8

    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"]["cached"] == len(before)
    assert summary["generation"]["generated"] == 8 - len(before)
    keys = _cache_keys(cache)
    assert len(keys) == len(set(keys)) == 8  # nothing generated twice
    after = {(r["benchmark"], r["id"], r["sample"]): r["response"]
             for r in map(json.loads, [ln for ln in cache.read_text().splitlines() if ln.endswith("}")])}
    assert all(after[k] == v for k, v in before.items())


def test_in_process_backend(tiny_model_dir, shared_samples_dir, tmp_path):
    out = tmp_path / "hf"
    assert main(_args(shared_samples_dir, out, ["--model-path", str(tiny_model_dir), "--limit", "1"])) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generation"]["generated"] == 4 and summary["failed"] == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["finish_reason"] for r in rows} <= {"stop", "length"}


def test_a_prompt_that_cannot_fit_is_a_counted_failure(tmp_path, shared_samples_dir, tiny_tokenizer):
    cfg = _cfg(shared_samples_dir, benchmarks=["frames"], max_input_tokens=64)
    samples = load_samples(cfg)
    dead = EndpointBackend("http://127.0.0.1:9/v1", "m", max_retries=0)
    cache, counts = generate_all(samples, cfg, dead, tiny_tokenizer, tmp_path, {"model": "m"})
    assert counts["failed"] == 4 and counts["generated"] == 0
    records = score_generations(samples, cache, cfg, tiny_tokenizer)
    assert all(r["failed"] and "instructions and question alone" in r["error"] for r in records)
