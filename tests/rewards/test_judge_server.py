"""The judge over real HTTP: `transformers serve` on loopback, and stdlib servers that misbehave.

Every loop here is bounded and every server listens on 127.0.0.1 only. A failing judge must give
"no verdict" (rule-score fallback, counted), never a crash or a hang.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from longrl.config import JudgeConfig, RewardConfig
from longrl.rewards import judge_cli
from longrl.rewards.hybrid import HybridReward, JudgeFailureError, RewardItem
from longrl.rewards.judge import JudgeRequest, OpenAIJudge


class FakeJudgeServer:
    """An OpenAI-style /v1/chat/completions on 127.0.0.1 with a chosen behaviour.

    modes: 'judge' ([[YES]] when the two delimited answers are equal ignoring case), 'garbage' (200 with
    HTML), 'bad_json' (200 JSON without choices), 'slow' (sleeps ``delay`` first); ``fail_first`` answers
    the first N requests with ``fail_status`` (429 or 503).
    """

    def __init__(self, mode="judge", delay=0.0, fail_first=0, fail_status=429):
        self.mode, self.delay, self.fail_first, self.fail_status = mode, delay, fail_first, fail_status
        self.hits = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.hits += 1
                    n = outer.hits
                outer.respond(self, n, json.loads(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def respond(self, h, n: int, payload: dict) -> None:
        if n <= self.fail_first:
            return self.send(h, self.fail_status, b'{"error": "busy"}')
        if self.mode == "garbage":
            return self.send(h, 200, b"<html>502 upstream hiccup</html>")
        if self.mode == "bad_json":
            return self.send(h, 200, b'{"choices": []}')
        if self.mode == "slow":
            time.sleep(self.delay)
        user = payload["messages"][-1]["content"]
        a1, a2 = (re.search(rf"Answer {i}: <<<(.*?)>>>", user).group(1) for i in (1, 2))
        verdict = "[[YES]]" if a1.strip().lower() == a2.strip().lower() else "[[NO]]"
        out = {"choices": [{"message": {"role": "assistant", "content": f"Compared. {verdict}"}}]}
        self.send(h, 200, json.dumps(out).encode())

    @staticmethod
    def send(h, status: int, body: bytes) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def start(**kw):
        servers.append(FakeJudgeServer(**kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def judge_cfg(base_url: str, **kw) -> JudgeConfig:
    defaults = dict(backend="openai", endpoint=base_url, model="fake", timeout_s=5.0, max_retries=2,
                    backoff_s=0.01, max_backoff_s=0.05, breaker_failures=3, breaker_cooldown_s=60.0)
    return JudgeConfig(**{**defaults, **kw})


def reqs(n: int, same_every: int = 2) -> list[JudgeRequest]:
    return [JudgeRequest("Which city?", f"city {i}" if i % same_every else "Port Amber", "port amber")
            for i in range(n)]


def wrong_items(n: int) -> list[RewardItem]:
    return [RewardItem("qa", "Which city?", f"<think>t</think> Therefore, the answer is Lumen {i}.",
                       ["Port Amber"]) for i in range(n)]


def test_batch_with_retries_on_429_and_503(fake_server):
    for status in (408, 429, 503):
        srv = fake_server(fail_first=2, fail_status=status)
        judge = OpenAIJudge(judge_cfg(srv.base_url, concurrency=1))
        assert judge.judge_many(reqs(4)) == [True, False, True, False]
        m = judge.metrics()
        assert m["judge/retries"] == 2 and m["judge/failures"] == 0 and m["judge/latency_p95"] > 0
        assert srv.hits == 2 + 3                                   # 2 refused + 3 distinct requests


def test_garbage_answers_give_no_verdict_and_rule_fallback(fake_server):
    for mode in ("garbage", "bad_json"):
        srv = fake_server(mode=mode)
        hr = HybridReward(RewardConfig(), OpenAIJudge(judge_cfg(srv.base_url)))
        out = hr.score_batch(wrong_items(6))
        assert [r.score for r in out] == [0.0] * 6 and {r.decided_by for r in out} == {"fallback"}
        m = hr.metrics()
        assert m["reward/judge_failures"] == 6 and m["judge/errors"] >= 3
        assert m["judge/breaker_opens"] == 1 and srv.hits <= 6      # the breaker stops the hammering


def test_slow_server_times_out_within_bounds(fake_server):
    srv = fake_server(mode="slow", delay=3.0)
    judge = OpenAIJudge(judge_cfg(srv.base_url, timeout_s=0.3, max_retries=1, concurrency=4, breaker_failures=4))
    t0 = time.monotonic()
    assert judge.judge_many(reqs(8, same_every=100)) == [None] * 8
    assert time.monotonic() - t0 < 3.0                             # 0.3s timeouts, not the 3s server
    m = judge.metrics()
    assert m["judge/errors"] >= 4 and m["judge/breaker_opens"] == 1


def test_dead_endpoint_stops_training_after_the_limit():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                                  # closed again: connection refused
    judge = OpenAIJudge(judge_cfg(f"http://127.0.0.1:{port}/v1"))
    hr = HybridReward(RewardConfig(max_consecutive_judge_failures=10), judge)
    out = hr.score_batch(wrong_items(5))
    assert [r.decided_by for r in out] == ["fallback"] * 5
    with pytest.raises(JudgeFailureError, match=r"ConnectError.*127\.0\.0\.1"):
        hr.score_batch(wrong_items(5))


def test_judge_cli_writes_verdicts(fake_server, tmp_path, capsys):
    srv = fake_server()
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"id": 1, "question": "q", "prediction": "Port Amber", "gold": "port amber"},
            {"id": 2, "question": "q", "prediction": "Lumen", "gold": ["Norwick", "lumen"]},
            {"id": 3, "question": "q", "prediction": "Lumen", "gold": "Norwick"}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parser = argparse.ArgumentParser()
    judge_cli.add_arguments(parser)
    out = tmp_path / "verdicts.jsonl"
    args = parser.parse_args(["--in", str(pairs), "--out", str(out), "--endpoint", srv.base_url, "--model", "fake",
                              "--set", "reward.judge.cache_path=" + str(tmp_path / "cache.sqlite")])
    assert judge_cli.run(args) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["id"], g["verdict"]) for g in got] == [(1, True), (2, True), (3, False)]
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["yes"] == 2


@pytest.mark.parametrize("lines, where, field", [
    (['{"question": "q", "prediction": "p", "gold": "g"}', "{not json"], ":line 2:", "<json>"),
    (['{"question": "q", "prediction": "p", "gold": "g"}', "", '["a list"]'], ":line 3:", "<json>"),
    (['{"question": "q", "prediction": "p", "gold": "g"}', '{"question": "q", "prediction": "p", "gold": []}'],
     ":record 2:", "gold"),
    (['{"question": "q", "gold": "g"}'], ":record 1:", "prediction"),
])
def test_judge_cli_names_the_bad_row_before_judging(tmp_path, lines, where, field):
    from longrl.data.records import RecordError

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=rf"{re.escape(str(pairs) + where)} field '{re.escape(field)}'"):
        judge_cli._read_pairs(pairs)


def _judge_in_thread(judge, batch):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("v", judge.judge_many(batch)), daemon=True)
    t.start()
    return t, box


def test_real_transformers_serve_batch_then_killed_mid_batch(openai_server, tiny_model_dir):
    base, proc = openai_server(tiny_model_dir)
    cfg = judge_cfg(base, model=str(tiny_model_dir), max_tokens=8, timeout_s=60.0, concurrency=1,
                    max_retries=1, breaker_failures=2)
    judge = OpenAIJudge(cfg)
    first = judge.judge_many(reqs(3, same_every=100))
    m = judge.metrics()
    assert len(first) == 3 and m["judge/calls"] == 3 and m["judge/errors"] == 0   # real 200 responses
    assert m["judge/unparsable"] == sum(v is None for v in first)                  # a random model rambles
    t, box = _judge_in_thread(judge, [JudgeRequest("q2", f"p{i}", "g") for i in range(12)])
    deadline = time.monotonic() + 60
    while judge.stats.calls < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    t.join(timeout=60)
    assert not t.is_alive(), "judge hung after the server died"
    verdicts = box["v"]
    m = judge.metrics()
    assert len(verdicts) == 12 and m["judge/errors"] >= 2 and m["judge/breaker_opens"] == 1
    assert m["judge/breaker_rejections"] >= 1 and verdicts[-1] is None


PAIRS = [("What is the capital of Veridia?", "Port Amber", "port amber"),
         ("How many moons orbit Tessel?", "three", "3"),
         ("Who founded Norwick?", "Ada Lumen", "Ada Lumen"),
         ("Which river flows through Norwick?", "the Lumen river", "Lumen"),
         ("What year did the bridge open?", "1912", "1921"),
         ("Who wrote the charter?", "Marek Oss", "Ilse Varn"),
         ("What colour is the flag?", "green", "blue"),
         ("How tall is the tower in metres?", "120 m", "120 metres")]


@pytest.mark.slow
def test_smollm2_judge_through_transformers_serve(openai_server, smollm2_dir):
    base, _ = openai_server(smollm2_dir)
    judge = OpenAIJudge(judge_cfg(base, model=str(smollm2_dir), max_tokens=128, timeout_s=120.0, concurrency=2))
    t0 = time.monotonic()
    verdicts = judge.judge_many([JudgeRequest(*p) for p in PAIRS])
    wall = time.monotonic() - t0
    m = judge.metrics()
    truth = [p[1].lower() == p[2].lower() or i in (1, 3, 7) for i, p in enumerate(PAIRS)]
    agree = sum(v is t for v, t in zip(verdicts, truth))
    print(f"\nSmolLM2 via transformers serve: {len(PAIRS)} pairs in {wall:.1f}s, verdicts={verdicts}, "
          f"agree={agree}/{len(PAIRS)}, no_verdict={m['judge/failures']}, "
          f"latency p50={m['judge/latency_p50']:.2f}s p95={m['judge/latency_p95']:.2f}s")
    assert m["judge/errors"] == 0 and m["judge/calls"] == len(PAIRS)
