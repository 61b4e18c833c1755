"""`longrl distill`: rejection sampling from a real teacher behind `transformers serve`, filters, the
resumable ledger (a killed run re-requests nothing finished), dead endpoints, and distill -> `longrl sft`.

The teacher is a tiny Qwen2 model trained here (10 s of `train_sft`) to answer "Port Amber" with a think
block: greedy decoding makes it deterministic, so a question whose gold is "Port Amber" yields k identical
correct traces (de-duplicated to one) and a question with another gold yields none.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from longrl.config import ConfigError, DistillFilterConfig, load_config
from longrl.data.records import DocQASample, RecordError
from longrl.distill import (
    LEDGER,
    DistillError,
    RateLimiter,
    append_line,
    read_ledger,
    run_distill,
    select_traces,
)

DOC = "The capital of Veridia is Port Amber. The river Lumen flows through Norwick."
ANSWER = "<think>\nPort Amber\n</think>\n\nTherefore, the answer is Port Amber."


def _q(i: str, question: str, gold: str, source: str = "toy") -> dict:
    return {"id": i, "source": source, "document": DOC, "question": question, "answers": [gold]}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny model that has memorised ANSWER for the capital question (greedy reproduces it exactly)."""
    from longrl.config import OptimConfig, SFTConfig
    from longrl.models import build_tiny_model, build_tiny_tokenizer
    from longrl.train.sft import train_sft

    sample = DocQASample(id="c", source="toy", task="qa", document=DOC, question="What is the capital of Veridia?",
                         answers=["Port Amber"], metadata={"response": ANSWER})
    tok = build_tiny_tokenizer([DOC, sample.question, ANSWER, "Which river flows through Norwick?"] * 5,
                               vocab_size=300)
    model = build_tiny_model(tok, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    cfg = SFTConfig(steps=60, batch_size=1, heldout_fraction=0.0, eval_every=0,
                    optim=OptimConfig(lr=5e-3, warmup_steps=5, schedule="cosine"))   # final loss ~0.09
    run = tmp_path_factory.mktemp("teacher")
    res = train_sft(model, tok, [sample], cfg, run_dir=run, heldout=[])
    assert res.train_loss < 0.3, f"the teacher did not learn its answer (loss {res.train_loss:.3f})"
    return res.final_dir


@pytest.fixture(scope="module")
def teacher_url(openai_server, teacher_dir) -> str:
    base, _ = openai_server(teacher_dir)
    return base


def _questions(tmp_path: Path, n_extra: int = 0) -> tuple[Path, Path]:
    a = tmp_path / "a.jsonl"
    rows = [_q("capital", "What is the capital of Veridia?", "Port Amber"),
            _q("river", "Which river flows through Norwick?", "Lumen")]
    rows += [_q(f"x{i}", "What is the capital of Veridia?", "Port Amber") for i in range(n_extra)]
    a.write_text("".join(json.dumps(r) + "\n" for r in rows))
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps(_q("capital", "What is the capital of Veridia?", "Port Amber", source="other")) + "\n")
    return a, b


def _overrides(url: str, teacher: Path, out: Path, sources: list[Path], **extra) -> list[str]:
    srcs = ", ".join(f"{{path: {p}, format: jsonl}}" for p in sources)
    ov = {"distill.endpoint": url, "distill.teacher_model": str(teacher), "distill.out": str(out),
          "distill.tokenizer": str(teacher), "distill.k": 3, "distill.split_n": True, "distill.temperature": 0.0,
          "distill.max_new_tokens": 32, "distill.concurrency": 2, "distill.max_retries": 1,
          "distill.backoff_s": 0.01, "distill.timeout_s": 60.0, "logging.progress": False, **extra}
    return [f"distill.sources=[{srcs}]"] + [f"{k}={json.dumps(v) if isinstance(v, str | dict) else v}" for k, v in ov.items()]


def _cfg(*args, **kw):
    return load_config(None, _overrides(*args, **kw))


# ---------------------------------------------------------------------------------------------- pure parts
def test_rate_limiter_spaces_requests():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)     # 4 requests/s = one per 0.25 s
    waits = [lim.acquire(1), lim.acquire(3), lim.acquire(1)]
    assert waits == [0.0, 0.25, 0.75]                              # the 3-request batch holds 3 slots
    assert RateLimiter(0).acquire(100) == 0.0


def test_ledger_drops_a_torn_last_line_and_names_a_bad_one(tmp_path):
    p = tmp_path / LEDGER
    append_line(p, {"key": "toy/a", "traces": []})
    append_line(p, {"key": "toy/b", "traces": []})
    good = p.read_bytes()
    with p.open("ab") as f:
        f.write(b'{"key": "toy/c", "tra')                         # killed mid-write
    assert list(read_ledger(p)) == ["toy/a", "toy/b"] and p.read_bytes() == good
    p.write_bytes(good + b"garbage\n" + good)
    with pytest.raises(RecordError, match=r"ledger\.jsonl:3"):
        read_ledger(p)


def _trace(text, acc=True, n=10):
    return {"text": text, "acc": acc, "n_tokens": n, "score": float(acc)}


def test_filters_length_citations_dedup_and_cap():
    s = DocQASample(id="q", source="toy", task="qa", document=DOC, question="?", answers=["Port Amber"])
    cite = "The text: the capital of Veridia is Port Amber. So Port Amber."   # one 6-word verbatim citation
    traces = [_trace("wrong", acc=False), _trace("short", n=2), _trace("long", n=99), _trace("no quote"),
              _trace(cite), _trace(cite.upper()), _trace(cite + " Indeed."), _trace(cite + " Yes.")]
    f = DistillFilterConfig(min_response_tokens=5, max_response_tokens=50, min_citations=1, dedup=True,
                            max_per_question=2)
    kept, dropped = select_traces(s, traces, f)
    assert [j for j, _, _ in kept] == [4, 6] and all(c == 1 for _, _, c in kept)
    assert dropped == Counter(length=2, citations=1, duplicate=1, max_per_question=1)
    kept, dropped = select_traces(s, traces, DistillFilterConfig(dedup=False))
    assert len(kept) == 7 and not dropped                             # every correct trace, unfiltered


def test_bad_inputs_are_named(tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"       # the same source/id in two files
    one.write_text(json.dumps(_q("a", "q?", "x")) + "\n")
    two.write_text(json.dumps(_q("a", "q2?", "y")) + "\n")
    with pytest.raises(RecordError, match="toy:a: field 'id': duplicate question id"):
        run_distill(_cfg("http://127.0.0.1:9/v1", tmp_path, tmp_path / "o", [one, two]))
    with pytest.raises(ConfigError, match="distill.sources"):
        run_distill(load_config(None, [f"distill.out={tmp_path / 'o2'}"]))
    with pytest.raises(ConfigError, match="distill.filters.max_response_tokens"):
        load_config(None, ["distill.filters.min_response_tokens=10", "distill.filters.max_response_tokens=5"])


# ---------------------------------------------------------------------------------------------- real server
def test_distill_then_sft_end_to_end(teacher_url, teacher_dir, tmp_path):
    from longrl.cli import main

    a, b = _questions(tmp_path)
    out = tmp_path / "distill"
    res = run_distill(_cfg(teacher_url, teacher_dir, out, [a, b]))
    st = res.stats
    assert (st["toy"].sampled, st["toy"].correct, st["toy"].kept) == (6, 3, 1)   # capital: 3 same traces
    assert st["toy"].dropped == {"duplicate": 2} and st["toy"].failed_requests == 0
    assert (st["other"].sampled, st["other"].kept) == (3, 1) and res.requested == 3
    rows = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert [(r["source"], r["id"]) for r in rows] == [("toy", "capital#0"), ("other", "capital#0")]
    assert rows[0]["metadata"]["response"] == ANSWER and rows[0]["metadata"]["distill"]["trace"] == 0
    summary = (out / "summary.md").read_text()
    assert "| toy | 2/2 | 6 | 3 | 1 | 16.7% | 0 | 0 | 0 | 2 | 0 |" in summary
    assert "| other | 1/1 | 3 | 3 | 1 | 33.3% |" in summary
    ledger = read_ledger(out / LEDGER)
    assert [t["acc"] for t in ledger["toy/river"]["traces"]] == [False] * 3     # rejected, but recorded
    # distill -> sft: `longrl sft` trains a tiny student on the distilled file
    run = tmp_path / "sft_run"
    assert main(["sft", "--init-tiny", "--tiny-hidden", "32", "--config", str(_yaml(tmp_path)),
                 f"model.path={tmp_path / 'student'}", f"output_dir={run}",
                 f"sft.sources=[{{path: {out / 'sft.jsonl'}, format: jsonl}}]", "sft.steps=3", "sft.batch_size=2",
                 "sft.heldout_fraction=0.0", "sft.eval_every=0", "logging.progress=false",
                 "logging.tensorboard=false"]) == 0
    metrics = [json.loads(x) for x in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and (run / "sft" / "final" / "model.safetensors").is_file()
    # a second run asks nothing (all done) and changed filters re-select from the ledger
    again = run_distill(_cfg(teacher_url, teacher_dir, out, [a, b], **{"distill.filters.dedup": False}))
    assert again.requested == 0 and again.stats["toy"].kept == 3


def _yaml(tmp_path: Path) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text("model: {dtype: float32, device: cpu}\n")
    return p


def test_in_process_teacher(teacher_dir, tmp_path):
    a, _ = _questions(tmp_path)
    res = run_distill(_cfg("", teacher_dir, tmp_path / "d", [a], **{"distill.backend": "hf", "distill.k": 2}))
    assert (res.stats["toy"].sampled, res.stats["toy"].correct, res.stats["toy"].kept) == (4, 2, 1)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_dead_endpoint_bounded_retries_then_clear_error(teacher_dir, tmp_path, capsys):
    from longrl.cli import main

    a, b = _questions(tmp_path, n_extra=4)
    url = _closed_port_url()
    t0 = time.monotonic()
    ov = _overrides("", teacher_dir, tmp_path / "unused", [], **{"distill.concurrency": 1})
    ov = [o for o in ov if not o.startswith(("distill.sources=", "distill.endpoint=", "distill.out=",
                                             "distill.teacher_model=", "distill.k="))]
    args = ["distill", "--source", f"{a}:jsonl", "--source", str(b), "--endpoint", url, "--teacher-model", "t",
            "-k", "3", "--out", str(tmp_path / "d"), *ov]                 # the README's flags
    assert main(args) == 2
    assert time.monotonic() - t0 < 60
    err = capsys.readouterr().err
    assert f"error: the teacher at {url} failed 3 questions in a row" in err and "ConnectError" in err
    failures = (tmp_path / "d" / "failures.jsonl").read_text().splitlines()
    assert len(failures) == 3                                     # stopped at the limit, not 7 questions
    assert "Stopped early" in (tmp_path / "d" / "summary.md").read_text()


def test_server_dies_mid_run_then_resume_elsewhere(openai_server, teacher_dir, teacher_url, tmp_path):
    """The endpoint is killed mid-run: bounded retries, a clear error, every finished question kept; the
    resumed run (against a live server) asks only about the rest."""
    base, proc = openai_server(teacher_dir)
    a, b = _questions(tmp_path, n_extra=6)
    out = tmp_path / "d"
    cfg = _cfg(base, teacher_dir, out, [a, b], **{"distill.concurrency": 1, "distill.requests_per_s": 6.0})
    box = {}

    def target():
        try:
            run_distill(cfg, progress=False)
        except DistillError as e:
            box["error"] = str(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while len(read_ledger(out / LEDGER)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    t.join(timeout=120)
    assert not t.is_alive(), "distill hung after the teacher died"
    assert "failed 3 questions in a row" in box["error"] and base in box["error"]
    done = read_ledger(out / LEDGER)
    assert 2 <= len(done) < 9
    before = (out / LEDGER).read_bytes()
    res = run_distill(_cfg(teacher_url, teacher_dir, out, [a, b]), progress=False)
    assert res.requested == 9 - len(done)
    assert (out / LEDGER).read_bytes().startswith(before)          # append-only: finished lines untouched
    assert len(read_ledger(out / LEDGER)) == 9
    assert sum(s.kept for s in res.stats.values()) == 1 + 6 + 1   # capital, x0..x5, other/capital
    assert sum(s.failed_requests for s in res.stats.values()) == 3


def test_killed_process_resumes_without_re_requesting(teacher_url, teacher_dir, tmp_path):
    """SIGKILL the `longrl distill` process mid-run; the re-run asks only about unfinished questions."""
    a, b = _questions(tmp_path, n_extra=6)
    out = tmp_path / "d"
    ov = _overrides(teacher_url, teacher_dir, out, [a, b], **{"distill.concurrency": 1, "distill.requests_per_s": 4.0})
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "longrl.cli", "distill", *ov], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(read_ledger(out / LEDGER)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, f"distill ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = read_ledger(out / LEDGER)
    assert 2 <= len(done) < 9
    res = run_distill(load_config(None, ov), progress=False)
    assert res.requested == 9 - len(done)
    keys = [json.loads(x)["key"] for x in (out / LEDGER).read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 9                         # nothing asked twice


def test_separate_reasoning_field_becomes_a_think_block():
    from longrl.rollout.openai import chat_text

    assert chat_text({"content": "Therefore, the answer is 3.", "reasoning_content": " 1 + 2 = 3 "}) == (
        "<think>\n1 + 2 = 3\n</think>\n\nTherefore, the answer is 3.")
    assert chat_text({"content": "x", "reasoning": "r"}).startswith("<think>\nr\n</think>")
    assert chat_text({"content": "plain", "reasoning_content": ""}) == "plain"
    assert chat_text({"content": None}) == ""


@pytest.mark.slow
def test_smollm2_teacher_through_transformers_serve(openai_server, smollm2_dir, tmp_path):
    """The real SmolLM2-135M-Instruct as a sampling teacher: every trace is requested, scored and counted."""
    base, _ = openai_server(smollm2_dir)
    a, b = _questions(tmp_path)
    t0 = time.monotonic()
    res = run_distill(_cfg(base, smollm2_dir, tmp_path / "d", [a, b], **{
        "distill.k": 2, "distill.temperature": 0.7, "distill.max_new_tokens": 48, "distill.require_think": False,
        "distill.extra_body": {"generation_config": '{"do_sample": true}'}, "distill.timeout_s": 300.0}),
        progress=False)
    st = res.stats
    total = {k: sum(getattr(s, k) for s in st.values()) for k in ("sampled", "correct", "kept", "failed_requests")}
    print(f"\nSmolLM2 teacher: {total} in {time.monotonic() - t0:.0f}s")
    assert total["sampled"] == 6 and total["failed_requests"] == 0 and res.requested == 3
    rows = (tmp_path / "d" / "sft.jsonl").read_text().splitlines()
    assert len(rows) == total["kept"] <= total["correct"]
