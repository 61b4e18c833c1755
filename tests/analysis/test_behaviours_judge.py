"""The LLM-judge path of the behaviour counter over real HTTP: `transformers serve` on loopback (a tiny
random model: real 200 answers that are not the strict format, so every one is a counted no-verdict;
SmolLM2-135M-Instruct in the slow test), and a stdlib server that answers in the format, for the cache."""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from longrl.analysis import behaviours_cli
from longrl.analysis.behaviours import BEHAVIOURS, count_behaviours, make_behaviour_judge
from longrl.config import JudgeConfig

RESPONSES = [
    "<think>First, I need to find the year. According to the text, 1921. Let me verify that.</think> "
    "Therefore, the answer is 1921.",
    "<think>Norwick. Wait, that is wrong. Actually, the text says Port Amber.</think> Therefore, the answer is "
    "Port Amber.",
    "<think>Port Amber.</think> Therefore, the answer is Port Amber.",
]


def cfg(base_url: str, **kw) -> JudgeConfig:
    defaults = dict(backend="openai", endpoint=base_url, model="m", timeout_s=30.0, max_retries=1, backoff_s=0.01,
                    max_backoff_s=0.05, breaker_failures=3, breaker_cooldown_s=60.0, max_tokens=48)
    return JudgeConfig(**{**defaults, **kw})


class RuleCountingServer:
    """An OpenAI-style chat endpoint on 127.0.0.1 that answers with the rule counter's counts as JSON
    (a stand-in judge that follows the format, so the parse and cache path can be checked exactly)."""

    def __init__(self):
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.hits += 1
                quoted = payload["messages"][-1]["content"].split("<<<", 1)[1].rsplit(">>>", 1)[0]
                text = "Counting. " + json.dumps(count_behaviours(quoted))
                body = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_judge_counts_are_parsed_and_cached(tmp_path):
    srv = RuleCountingServer()
    try:
        cache = str(tmp_path / "cache.sqlite")
        judge = make_behaviour_judge(cfg(srv.base_url, cache_path=cache))
        got = judge.count_many(RESPONSES + RESPONSES[:1])            # the repeat is asked once
        assert got == [count_behaviours(r) for r in RESPONSES + RESPONSES[:1]]
        assert srv.hits == 3 and judge.metrics()["judge/failures"] == 0
        again = make_behaviour_judge(cfg(srv.base_url, cache_path=cache))   # a new process: the SQLite cache
        assert again.count_many(RESPONSES) == got[:3] and srv.hits == 3
        assert again.metrics()["judge/cache_hit_rate"] == 1.0
    finally:
        srv.close()


def test_cli_judge_path_through_real_transformers_serve(openai_server, tiny_model_dir, tmp_path, capsys):
    """A random tiny model answers 200 with text that is not the strict format: every response is a
    counted no-verdict (null in counts.jsonl, excluded from the means), and the CLI says so (exit 1)."""
    base, _ = openai_server(tiny_model_dir)
    inp = tmp_path / "stage" / "preds.jsonl"
    inp.parent.mkdir()
    inp.write_text("".join(json.dumps({"response": r, "acc": 1.0}) + "\n" for r in RESPONSES))
    parser = argparse.ArgumentParser()
    behaviours_cli.add_arguments(parser)
    args = parser.parse_args(["--in", str(inp), "--out", str(tmp_path / "out"), "--endpoint", base,
                              "--model", str(tiny_model_dir), "--set", "reward.judge.max_tokens=8",
                              "--set", "reward.judge.concurrency=1"])
    assert behaviours_cli.run(args) == 1
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["counter"] == "judge" and summary["no_verdict"] == 3
    assert summary["judge/calls"] == 3 and summary["judge/errors"] == 0          # real 200 answers
    assert summary["judge/unparsable"] == 3 and summary["judge/failures"] == 3
    rows = [json.loads(line) for line in (tmp_path / "out" / "counts.jsonl").read_text().splitlines()]
    assert [r["counts"] for r in rows] == [None] * 3
    assert "0 (+3 no verdict)" in (tmp_path / "out" / "behaviours.md").read_text()


def test_dead_judge_gives_no_verdicts_not_zeros(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = make_behaviour_judge(cfg(f"http://127.0.0.1:{port}/v1"))
    assert judge.count_many(RESPONSES) == [None] * 3
    m = judge.metrics()
    assert m["judge/failures"] == 3 and m["judge/errors"] >= 3 and m["judge/breaker_opens"] == 1


@pytest.mark.slow
def test_smollm2_counts_behaviours_through_transformers_serve(openai_server, smollm2_dir):
    base, _ = openai_server(smollm2_dir)
    judge = make_behaviour_judge(cfg(base, model=str(smollm2_dir), max_tokens=64, timeout_s=120.0, concurrency=2))
    t0 = time.monotonic()
    got = judge.count_many(RESPONSES)
    m = judge.metrics()
    rules = [count_behaviours(r) for r in RESPONSES]
    print(f"\nSmolLM2 behaviour judge: {len(RESPONSES)} responses in {time.monotonic() - t0:.1f}s; judged={got}; "
          f"rules={rules}; no_verdict={m['judge/failures']}")
    assert m["judge/errors"] == 0 and m["judge/calls"] == len(RESPONSES)
    assert m["judge/failures"] == sum(c is None for c in got) == m["judge/unparsable"]
    assert all(c is None or set(c) == set(BEHAVIOURS) for c in got)


def test_in_process_judge_path(tiny_model_dir, tmp_path, capsys):
    """`--model-path`: the same prompt and strict parser on an in-process model (a random tiny one: real
    generations, none in the format, all counted as no verdict)."""
    inp = tmp_path / "stage" / "preds.jsonl"
    inp.parent.mkdir()
    inp.write_text("".join(json.dumps({"response": r}) + "\n" for r in RESPONSES[:2]))
    parser = argparse.ArgumentParser()
    behaviours_cli.add_arguments(parser)
    args = parser.parse_args(["--in", str(inp), "--out", str(tmp_path / "out"), "--model-path", str(tiny_model_dir),
                              "--set", "reward.judge.max_tokens=6", "--set", "reward.judge.device=cpu"])
    assert behaviours_cli.run(args) == 1
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["judge/calls"] == 1 and summary["judge/errors"] == 0          # one batch of two
    assert summary["judge/unparsable"] == 2 and summary["no_verdict"] == 2
