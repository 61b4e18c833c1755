"""`rollout.backend: vllm-server`: a real vLLM OpenAI server started by longrl, weights reloaded in place
through its /collective_rpc endpoint after every step, and a server killed with SIGKILL mid-run: a
clear error, then the rerun resumes from the last checkpoint. Two server starts in all."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest
from _tiny_rl_job import BASE, QuarterVocabReward, make_samples
from _vllm_checks import LOGPROB_ATOL, check_engine_matches_trainer, train_steps
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.config import load_config
from longrl.curriculum.phases import PhaseSampler
from longrl.rollout.hf import stop_token_ids
from longrl.train.rl import build_generator, train_rl

pytestmark = pytest.mark.vllm


def _cfg(model_dir, extra=()):
    return load_config(None, BASE + [
        "reward.overlong.enabled=false", "rl.steps=4", "rl.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=4", "rl.optim.lr=0.02", "save_every=1", "keep_checkpoints=4",
        "rl.dynamic_sampling.enabled=false", "rollout.backend=vllm-server", f"model.path={model_dir}",
        f"rollout.vllm_python={sys.executable}", "rollout.vllm_kv_cache_gib=1", "rollout.max_retries=1",
        "rollout.timeout_s=120", *extra])


def _group_gone(pgid: int, timeout_s: float) -> bool:
    """True once no process of group ``pgid`` is left (a SIGKILLed one takes a moment to be reaped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def server(tiny64_dir):
    tok = AutoTokenizer.from_pretrained(tiny64_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny64_dir)
    gen = build_generator(_cfg(tiny64_dir), model, tok)
    yield gen
    gen.close()


def test_server_follows_trainer_weights_exactly(server, tiny64_dir):
    from longrl.rollout.vllm_server import VLLMServerGenerator

    assert isinstance(server, VLLMServerGenerator) and server.proc is not None
    tok = AutoTokenizer.from_pretrained(tiny64_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny64_dir).eval()
    prompts = [tok.encode("The capital of Veridia is"), tok.encode("Where does the river Lumen flow?")]
    stop = stop_token_ids(model, tok)
    assert server.sync_weights(model) == len(list(model.parameters()))
    check_engine_matches_trainer(server, model, prompts, 10, stop, LOGPROB_ATOL["tiny"])
    for _ in train_steps(model, tok.encode("Answer 1: 42. Answer 2: forty-two. [[YES]]"), steps=2, lr=0.05):
        server.sync_weights(model)
        check_engine_matches_trainer(server, model, prompts, 10, stop, LOGPROB_ATOL["tiny"])


def test_unreachable_server_error_names_the_endpoint(tiny64_dir):
    from longrl.rollout.vllm_engine import EngineError
    from longrl.rollout.vllm_server import VLLMServerGenerator, _free_port

    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(EngineError, match=f"{url}: GET /health"):
        VLLMServerGenerator(None, None, endpoint=url + "/v1", startup_timeout_s=2)


def test_server_killed_mid_run_then_resume(server, tiny64_dir, tmp_path):
    """SIGKILL of the server during step 3: the run stops with an error naming the server; rerunning
    resumes from the step-2 checkpoint on a fresh server and completes."""
    from longrl.rollout.vllm_engine import EngineError

    cfg = _cfg(tiny64_dir)
    tok = AutoTokenizer.from_pretrained(tiny64_dir)
    reward = QuarterVocabReward(tok)
    calls = {"n": 0}

    def killing_reward(samples, responses):
        calls["n"] += 1
        if calls["n"] == 3:  # one reward call per step (one round): step 3's rollouts are done
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
        return reward(samples, responses)

    def sampler():
        return PhaseSampler(make_samples(), batch_size=cfg.rl.prompts_per_step, seed=cfg.seed)

    model = AutoModelForCausalLM.from_pretrained(tiny64_dir)
    with pytest.raises(EngineError, match=rf"vLLM server at {server.root} exited with code -9.*resume"):
        train_rl(model, tok, sampler(), killing_reward, cfg, run_dir=tmp_path, generator=server)
    hist = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2]
    server.close()   # the API server is gone; its EngineCore child must not outlive close()
    assert _group_gone(server.proc.pid, timeout_s=10), "a process of the killed server's group outlived close()"
    model = AutoModelForCausalLM.from_pretrained(tiny64_dir)  # a new process would start from scratch
    result = train_rl(model, tok, sampler(), reward, cfg, run_dir=tmp_path)  # builds (and closes) a new server
    assert result.steps == 4
    hist = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    assert all(h["response_length/mean"] > 0 and "rollout/logprob_abs_diff" in h for h in hist)
