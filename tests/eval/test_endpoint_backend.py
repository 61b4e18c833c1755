"""The harness's endpoint backend over longrl.http, against a scripted server on 127.0.0.1
(tests/_fault_server.py stands in for a chat endpoint that misbehaves)."""

from __future__ import annotations

import json

from longrl.eval.harness import EndpointBackend, Job


def _chat(text: str, tokens: int = 3) -> str:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                       "usage": {"completion_tokens": tokens}})


def _run(backend: EndpointBackend, n: int) -> dict:
    jobs = [Job(("hotpotqa", f"q{i}", 0), [{"role": "user", "content": f"question {i}"}], 10, False) for i in range(n)]
    got = {}
    backend.run(jobs, lambda job, gen: got.setdefault(job.key[1], gen), max_new_tokens=8, temperature=0.7, top_p=0.9)
    assert len(got) == n  # every job reported exactly once
    return got


def test_transient_failures_are_retried_then_generated(fault_server):
    srv = fault_server([(503, "busy", 0.0), (429, "later", 0.0), (200, _chat("<think>t</think> Norwick", 5), 0.0)])
    backend = EndpointBackend(srv.base, "m", concurrency=1, max_retries=2, backoff_s=0.01)
    gen = _run(backend, 1)["q0"]
    assert (gen.response, gen.finish_reason, gen.completion_tokens, gen.error) == ("<think>t</think> Norwick", "stop", 5, "")
    assert srv.calls == 3
    body = json.loads(srv.requests[-1][3])
    assert body["messages"] == [{"role": "user", "content": "question 0"}] and body["max_tokens"] == 8


def test_exhausted_retries_and_malformed_answers_become_failed_generations(fault_server):
    srv = fault_server([(503, "busy", 0.0)])
    got = _run(EndpointBackend(srv.base, "m", concurrency=2, max_retries=1, backoff_s=0.01), 2)
    assert all(g.finish_reason == "error" and g.error == f"{srv.base}/chat/completions: failed after 2 attempts: "
               "HTTP 503: busy" for g in got.values())
    assert srv.calls == 4
    # a body without a chat choice is not retried (the harness used to retry it): failed at once, named
    srv = fault_server([(200, '{"choices": []}', 0.0), (200, _chat("late"), 0.0)])
    got = _run(EndpointBackend(srv.base, "m", concurrency=1, max_retries=3, backoff_s=0.01), 1)
    assert got["q0"].error.startswith(f"{srv.base}/chat/completions: malformed answer: answer has no choice")
    assert srv.calls == 1
