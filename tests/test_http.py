"""longrl.http, the one HTTP client: retries, back-off, errors and hooks against a scripted server on
127.0.0.1 (tests/_fault_server.py), the bounded thread pool, and the config sections' policies."""

from __future__ import annotations

import json
import threading
import time

import pytest

from longrl import http
from longrl.config import ConfigError, load_config
from tests._fault_server import FaultServer
from tests.conftest import free_port

FAST = http.HttpPolicy(timeout_s=5.0, max_retries=2, backoff_s=0.01, max_backoff_s=0.02)
OK = (200, '{"ok": 1}', 0.0)


@pytest.fixture
def server():
    servers = []

    def start(script, routes=None):
        servers.append(FaultServer(script, routes))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _post(srv_or_url, policy=FAST, body=None, **kw):
    url = srv_or_url if isinstance(srv_or_url, str) else srv_or_url.base + "/x"
    with http.new_client() as client:
        return http.request_json(client, url, policy, {"q": 1} if body is None else body, **kw)


def test_transient_failures_are_retried_then_the_answer_returned(server):
    srv = server([(503, "busy", 0.0), (429, "slow down", 0.0), OK])
    attempts, gates = [], []
    out = _post(srv, gate=lambda: gates.append(1), observe=attempts.append)
    assert out == {"ok": 1} and srv.calls == 3 and len(gates) == 3
    assert [(a.number, a.status, a.ok, a.will_retry) for a in attempts] == [
        (1, 503, False, True), (2, 429, False, True), (3, 200, True, False)]
    assert attempts[0].cause == "HTTP 503: busy" and attempts[0].url == srv.base + "/x"
    assert all(method == "POST" and json.loads(body) == {"q": 1} for method, _, _, body in srv.requests)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(server, status):
    srv = server([(status, "again", 0.0), OK])
    assert _post(srv) == {"ok": 1} and srv.calls == 2


def test_retries_exhausted_name_url_status_and_attempts(server):
    srv = server([(502, "bad gateway", 0.0)])
    with pytest.raises(http.HttpError) as err:
        _post(srv)
    assert str(err.value) == f"{srv.base}/x: failed after 3 attempts: HTTP 502: bad gateway"
    assert (err.value.status, err.value.attempts, err.value.retried_out) == (502, 3, True)
    assert srv.calls == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422, 501])
def test_other_error_statuses_fail_at_once(server, status):
    srv = server([(status, "no such thing", 0.0), OK])
    with pytest.raises(http.HttpError, match=rf"^{srv.base}/x: HTTP {status}: no such thing \(attempt 1, not retryable\)$"):
        _post(srv)
    assert srv.calls == 1


def test_a_permanent_error_after_a_transient_one_counts_both_attempts(server):
    srv = server([(503, "busy", 0.0), (404, "gone", 0.0), OK])
    with pytest.raises(http.HttpError) as err:
        _post(srv)
    assert (err.value.status, err.value.attempts, err.value.retried_out, srv.calls) == (404, 2, False, 2)


def test_malformed_answers_are_not_retried(server):
    srv = server([(200, "{not json", 0.0), OK])
    with pytest.raises(http.HttpError, match=rf"^{srv.base}/x: answer is not JSON .*'{{not json'"):
        _post(srv)
    assert srv.calls == 1

    def needs_answer(answer):
        return answer["answer"]

    srv = server([(200, '{"other": 1}', 0.0), OK])
    with pytest.raises(http.HttpError, match=r"malformed answer \(KeyError: 'answer'\): \{\"other\": 1\}"):
        _post(srv, parse=needs_answer)
    assert srv.calls == 1

    def positive(answer):
        if answer["ok"] <= 1:
            raise ValueError("ok must be > 1")
        return answer["ok"]

    srv = server([OK])
    with pytest.raises(http.HttpError, match=r"/x: malformed answer: ok must be > 1 \(attempt 1"):
        _post(srv, parse=positive)


def test_parse_result_and_empty_answers(server):
    srv = server([OK], routes={"/v1/empty": [(200, "", 0.0)]})
    assert _post(srv, parse=lambda a: a["ok"] + 1) == 2
    with http.new_client(base_url=srv.base) as client:
        assert http.request_json(client, "/empty", FAST, method="GET") is None
    method, path, _, body = srv.requests[-1]
    assert (method, path, body) == ("GET", "/v1/empty", b"")


def test_timeouts_are_retried_and_bounded(server):
    srv = server([(200, '{"ok": 1}', 1.0)])
    policy = http.HttpPolicy(timeout_s=0.2, max_retries=1, backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(http.HttpError, match=r"failed after 2 attempts: ReadTimeout") as err:
        _post(srv, policy)
    assert time.monotonic() - t0 < 2.0 and err.value.status is None and srv.calls == 2


def test_connection_refused_is_retried_and_named():
    url = f"http://127.0.0.1:{free_port()}/v1/x"
    attempts = []
    with pytest.raises(http.HttpError, match=rf"^{url}: failed after 3 attempts: ConnectError"):
        _post(url, observe=attempts.append)
    assert [a.status for a in attempts] == [None] * 3 and [a.will_retry for a in attempts] == [True, True, False]


def test_the_gate_stops_before_sending(server):
    class Closed(Exception):
        pass

    srv = server([(503, "busy", 0.0)])
    calls = []

    def gate():
        calls.append(1)
        if len(calls) > 1:
            raise Closed

    with pytest.raises(Closed):
        _post(srv, gate=gate)
    assert srv.calls == 1 and len(calls) == 2


def test_back_off_doubles_is_capped_and_jittered_within_bounds(server):
    exact = http.HttpPolicy(backoff_s=1.0, max_backoff_s=5.0, jitter=0.0)
    assert [exact.delay(k) for k in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = http.HttpPolicy(backoff_s=1.0, max_backoff_s=5.0, jitter=0.5)
    delays = [jittered.delay(3) for _ in range(200)]
    assert all(2.0 < d <= 4.0 for d in delays) and len(set(delays)) > 100
    srv = server([(503, "busy", 0.0), (503, "busy", 0.0), OK])
    t0 = time.monotonic()
    _post(srv, http.HttpPolicy(max_retries=2, backoff_s=0.1, jitter=0.0))
    assert time.monotonic() - t0 >= 0.3  # slept 0.1 + 0.2


def test_policy_rejects_impossible_values_by_name():
    with pytest.raises(ValueError, match=r"HttpPolicy.max_retries must be >= 0, got -1"):
        http.HttpPolicy(max_retries=-1)
    with pytest.raises(ValueError, match=r"HttpPolicy.timeout_s must be > 0"):
        http.HttpPolicy(timeout_s=0)


def test_map_concurrent_keeps_order_and_bounds_concurrency():
    lock, running, peak = threading.Lock(), [0], [0]

    def work(x):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02 * (5 - x % 5))  # later items finish first
        with lock:
            running[0] -= 1
        return x * x

    done = []
    out = http.map_concurrent(work, range(10), 3, on_done=lambda i, r: done.append((i, r)))
    assert out == [x * x for x in range(10)] and peak[0] <= 3
    assert sorted(done) == [(x, x * x) for x in range(10)]


def test_map_concurrent_fail_fast_or_collect():
    started = []

    def work(x):
        started.append(x)
        if x == 1:
            raise ValueError("item 1")
        time.sleep(0.05)
        return x

    with pytest.raises(ValueError, match="item 1"):
        http.map_concurrent(work, range(20), 1)
    assert len(started) <= 3  # the items not yet started were cancelled
    out = http.map_concurrent(lambda x: 1 / x, [1, 0, 2], 2, fail_fast=False)
    assert out[0] == 1.0 and isinstance(out[1], ZeroDivisionError) and out[2] == 0.5
    assert http.map_concurrent(work, [], 4) == []


def test_config_sections_build_one_policy_with_shared_defaults():
    cfg = load_config(None, [])
    sections = {"rollout": cfg.rollout, "distill": cfg.distill, "eval": cfg.eval, "reward.judge": cfg.reward.judge}
    policies = {name: sec.http_policy() for name, sec in sections.items()}
    assert {(p.max_retries, p.backoff_s, p.max_backoff_s) for p in policies.values()} == {
        (http.DEFAULT_MAX_RETRIES, http.DEFAULT_BACKOFF_S, http.DEFAULT_MAX_BACKOFF_S)}
    assert {n: p.timeout_s for n, p in policies.items()} == {
        "rollout": http.GENERATION_TIMEOUT_S, "distill": http.GENERATION_TIMEOUT_S, "eval": http.EVAL_TIMEOUT_S,
        "reward.judge": http.JUDGE_TIMEOUT_S}
    assert http.JUDGE_TIMEOUT_S < http.GENERATION_TIMEOUT_S < http.EVAL_TIMEOUT_S


def test_config_keys_set_the_policy_and_bad_values_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  timeout_s: 12\n  max_retries: 5\n  backoff_s: 0.25\n"
                    "reward:\n  judge:\n    max_backoff_s: 2\n")
    cfg = load_config(str(path), ["rollout.backoff_s=0.5", "distill.max_retries=0"])
    assert cfg.eval.http_policy() == http.HttpPolicy(timeout_s=12, max_retries=5, backoff_s=0.25)
    assert cfg.reward.judge.http_policy().max_backoff_s == 2
    assert cfg.rollout.http_policy().backoff_s == 0.5 and cfg.distill.http_policy().attempts == 1
    with pytest.raises(ConfigError, match=r"rollout.max_backoff_s.*must be >= 0"):
        load_config(None, ["rollout.max_backoff_s=-1"])
