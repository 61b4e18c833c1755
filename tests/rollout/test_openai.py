"""OpenAI-compatible backend against a real `transformers serve` and against faulty loopback servers.

What `transformers serve` (5.x) does, which these tests pin down: ``/v1/completions`` takes only a
string prompt (token ids -> 400), ignores ``n`` (one choice per answer), returns ``text`` decoded
without special tokens, ``finish_reason`` 'length' | 'stop' and ``usage``, but no token ids and no
logprobs; it decodes greedily unless the request's ``generation_config`` sets ``do_sample``; and
``POST /reset`` drops the loaded model so the next request re-reads the directory from disk.
"""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.http import HttpPolicy
from longrl.rollout.openai import GenerationError, OpenAIGenerator, OpenAIGeneratorConfig
from tests.conftest import free_port

SAMPLE = {"generation_config": json.dumps({"do_sample": True})}
QUESTIONS = ["What is the capital of Veridia?", "Where does the river Lumen flow?"]


def _chat_ids(tok, content: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _greedy(model_dir, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module")
def served(openai_server, tiny_model_dir):
    base, _ = openai_server(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return base, str(tiny_model_dir), tok


def _generator(served, **kw) -> OpenAIGenerator:
    base, model, tok = served
    kw = {"prompt_format": "text", "split_n": True, "http": HttpPolicy(timeout_s=60, max_retries=0), **kw}
    return OpenAIGenerator(OpenAIGeneratorConfig(base_url=base, model=model, **kw), tok)


# ------------------------------------------------------------------ real `transformers serve`
def test_completions_n_samples_for_two_prompts(served):
    _, _, tok = served
    prompts = [_chat_ids(tok, q) for q in QUESTIONS]
    assert all(tok(tok.decode(p))["input_ids"] == p for p in prompts)  # text prompts round-trip exactly
    gen = _generator(served, extra_body=SAMPLE)
    out = gen.generate(prompts, n=3, max_new_tokens=6, temperature=1.0)
    assert [len(group) for group in out] == [3, 3]
    for c in (c for group in out for c in group):
        assert c.finish_reason in ("stop", "length")
        assert 1 <= len(c.token_ids) <= 6
        assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == tok.eos_token_id
    assert len({c.text for group in out for c in group}) > 1  # do_sample took effect


def test_reseed_repeats_samples(served):
    _, _, tok = served
    gen = _generator(served, extra_body=SAMPLE, max_concurrency=1)  # serve seeds a global RNG
    prompts = [_chat_ids(tok, QUESTIONS[0])]

    def texts(seed):
        gen.reseed(seed)
        return [c.text for c in gen.generate(prompts, n=2, max_new_tokens=4)[0]]

    first = texts(1)
    assert texts(1) == first and texts(2) != first


def test_greedy_matches_local_generate_and_hits_length(served, tiny_model_dir):
    _, _, tok = served
    prompt = _chat_ids(tok, QUESTIONS[0])
    local = _greedy(tiny_model_dir, prompt, 5)
    [[c]] = _generator(served).generate([prompt], n=1, max_new_tokens=5, temperature=0.0)
    local_text = tok.decode(local, skip_special_tokens=True)
    if len(tok(local_text, add_special_tokens=False)["input_ids"]) <= 5:
        assert c.text == local_text
    else:  # re-tokenising the server's text took more ids than were sampled: cut to the budget
        assert local_text.startswith(c.text)
    assert c.finish_reason == ("length" if tok.eos_token_id not in local else "stop")
    assert len(c.token_ids) <= 5


def test_chat_endpoint(served):
    _, _, tok = served
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    out = _generator(served, mode="chat", extra_body=SAMPLE).generate_chat(messages, n=2, max_new_tokens=4)
    assert [len(group) for group in out] == [2, 2]
    for c in (c for group in out for c in group):
        assert c.finish_reason in ("stop", "length") and len(c.token_ids) <= 4
        assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text


def test_server_limits_give_clear_errors(served):
    _, _, tok = served
    prompt = _chat_ids(tok, QUESTIONS[0])
    with pytest.raises(GenerationError, match=r"/v1/completions: HTTP 400.*prompt must be a string"):
        _generator(served, prompt_format="ids").generate([prompt], n=1, max_new_tokens=2)
    with pytest.raises(GenerationError, match=r"/v1/completions: malformed answer: expected 2 choices, got 1.*split_n"):
        _generator(served, split_n=False).generate([prompt], n=2, max_new_tokens=2)
    with pytest.raises(GenerationError, match="HTTP 422"):  # unknown fields are refused, not retried
        _generator(served, extra_body={"return_token_ids": True}).generate([prompt], n=1, max_new_tokens=2)


def test_update_weights_reloads_the_server(openai_server, tiny_model_dir, tmp_path):
    sync_dir = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, sync_dir)
    base, _ = openai_server(sync_dir)
    tok = AutoTokenizer.from_pretrained(sync_dir)
    gen = OpenAIGenerator(OpenAIGeneratorConfig(base_url=base, model=str(sync_dir), prompt_format="text",
                                                sync_dir=str(sync_dir), sync_every=2,
                                                http=HttpPolicy(timeout_s=60)), tok)
    prompt = _chat_ids(tok, QUESTIONS[0])

    def served_greedy() -> str:  # the server's own text, before any re-tokenisation by the generator
        body = {"model": str(sync_dir), "prompt": tok.decode(prompt), "max_tokens": 8, "temperature": 0}
        return httpx.post(f"{base}/completions", json=body, timeout=60).json()["choices"][0]["text"]

    before = served_greedy()
    model = AutoModelForCausalLM.from_pretrained(sync_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    expected = tok.decode(model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):],
                          skip_special_tokens=True)
    assert expected != before
    gen.update_weights(model, step=1)  # not a sync step
    assert served_greedy() == before
    gen.update_weights(model, step=2)
    assert served_greedy() == expected


# ------------------------------------------------------------------ faults, on a stdlib loopback server
def _ok(n: int) -> str:
    return json.dumps({"choices": [{"index": i, "text": f"answer {i}", "finish_reason": "length",
                                    "token_ids": [10 + i, 11]} for i in range(n)]})


def _fault_generator(base: str, max_concurrency: int = 8, **kw) -> OpenAIGenerator:
    policy = HttpPolicy(**{"max_retries": 2, "backoff_s": 0.01, "timeout_s": 5.0, **kw})
    return OpenAIGenerator(OpenAIGeneratorConfig(base_url=base, model="m", http=policy,
                                                 max_concurrency=max_concurrency), tokenizer=None)


def test_429_then_success_is_retried(fault_server):
    srv = fault_server([(429, "slow down", 0.0), (200, _ok(2), 0.0)])
    out = _fault_generator(srv.base).generate([[1, 2, 3]], n=2, max_new_tokens=4)
    assert srv.calls == 2
    assert [c.token_ids for c in out[0]] == [[10, 11], [11, 11]]  # the server's ids are kept as sent
    assert [c.text for c in out[0]] == ["answer 0", "answer 1"]
    assert [c.finish_reason for c in out[0]] == ["length", "length"]


def test_5xx_exhausts_bounded_retries(fault_server):
    srv = fault_server([(503, "busy", 0.0)])
    with pytest.raises(GenerationError, match=r"/v1/completions: failed after 3 attempts: HTTP 503"):
        _fault_generator(srv.base).generate([[1]], n=1, max_new_tokens=4)
    assert srv.calls == 3


def test_garbage_json_names_the_endpoint_and_is_not_retried(fault_server):
    srv = fault_server([(200, "{not json", 0.0)])
    with pytest.raises(GenerationError, match=rf"^{srv.base}/completions: answer is not JSON"):
        _fault_generator(srv.base).generate([[1]], n=1, max_new_tokens=4)
    assert srv.calls == 1
    srv.script = [(200, "[1, 2]", 0.0)]
    with pytest.raises(GenerationError, match="not a JSON object"):
        _fault_generator(srv.base).generate([[1]], n=1, max_new_tokens=4)
    srv.script = [(200, '{"choices": "none"}', 0.0)]
    with pytest.raises(GenerationError, match="no list of choices"):
        _fault_generator(srv.base).generate([[1]], n=1, max_new_tokens=4)


def test_slower_than_timeout_fails_after_bounded_retries(fault_server):
    srv = fault_server([(200, _ok(1), 1.0)])
    gen = _fault_generator(srv.base, timeout_s=0.2, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(GenerationError, match=r"failed after 2 attempts: ReadTimeout"):
        gen.generate([[1]], n=1, max_new_tokens=4)
    assert srv.calls == 2 and time.monotonic() - t0 < 3.0


def test_dead_port_fails(fault_server):
    base = f"http://127.0.0.1:{free_port()}/v1"
    gen = _fault_generator(base)
    with pytest.raises(GenerationError, match=r"failed after 3 attempts: ConnectError"):
        gen.generate([[1]], n=1, max_new_tokens=4)


def test_a_failing_prompt_fails_the_batch(fault_server):
    srv = fault_server([(200, _ok(1), 0.0), (400, "bad prompt", 0.0), (200, _ok(1), 0.5)])
    gen = _fault_generator(srv.base, max_concurrency=1)
    with pytest.raises(GenerationError, match="HTTP 400: bad prompt"):
        gen.generate([[1], [2], [3], [4], [5], [6]], n=1, max_new_tokens=4)
    assert srv.calls <= 3  # requests not yet started when the error came are cancelled


def test_retokenised_ids_get_eos_on_stop_and_fit_the_budget(fault_server, tiny_tokenizer):
    text = "The capital of Veridia is Port Amber."
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    answer = {"choices": [{"index": 1, "text": text, "finish_reason": "length"},
                          {"index": 0, "text": text, "finish_reason": "stop"}]}
    srv = fault_server([(200, json.dumps(answer), 0.0)])
    gen = OpenAIGenerator(OpenAIGeneratorConfig(base_url=srv.base, model="m", http=HttpPolicy(max_retries=0)), tiny_tokenizer)
    [[stop, length]] = gen.generate([[1]], n=2, max_new_tokens=len(ids) + 1)
    assert stop.token_ids == [*ids, tiny_tokenizer.eos_token_id] and stop.finish_reason == "stop"
    assert length.token_ids == ids and length.text == text
    [[stop, length]] = gen.generate([[1]], n=2, max_new_tokens=3)
    assert stop.token_ids == [*ids[:2], tiny_tokenizer.eos_token_id] and length.token_ids == ids[:3]
    assert length.text == tiny_tokenizer.decode(ids[:3], skip_special_tokens=True)
