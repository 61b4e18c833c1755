"""The vLLM server backend's own requests (weight sync, prefix-cache reset) go through longrl.http.

vLLM cannot run in the core environment, so a scripted server on 127.0.0.1 (tests/_fault_server.py) stands
in for a user-started vLLM server at the network boundary; the real server is tested in tests/vllm/."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from longrl.http import HttpPolicy
from longrl.rollout.vllm_engine import EngineError
from longrl.rollout.vllm_server import VLLMServerGenerator
from tests._fault_server import FaultServer

ROUTES = {"/health": [(200, "", 0.0)], "/v1/models": [(200, json.dumps({"data": [{"id": "policy"}]}), 0.0)]}


@pytest.fixture
def fake_vllm():
    servers = []

    def start(**routes):
        servers.append(FaultServer([(500, "unexpected path", 0.0)], {**ROUTES, **routes}))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _client(srv, tmp_path) -> VLLMServerGenerator:
    return VLLMServerGenerator(None, None, endpoint=srv.base, http_policy=HttpPolicy(max_retries=2, backoff_s=0.01), sync_dir=str(tmp_path),
                               startup_timeout_s=5)


def test_reset_is_retried_and_a_missing_rpc_endpoint_is_named(fake_vllm, tmp_path, tiny_model_dir):
    srv = fake_vllm(**{"/reset_prefix_cache": [(503, "busy", 0.0), (200, "", 0.0)],
                       "/collective_rpc": [(404, '{"detail": "Not Found"}', 0.0)]})
    gen = _client(srv, tmp_path)
    assert gen.openai.cfg.model == "policy"
    gen.reset_prefix_cache()
    assert [p for _, p, _, _ in srv.requests].count("/reset_prefix_cache") == 2
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(EngineError, match=rf"^{srv.root}/collective_rpc: HTTP 404: .*not retryable.*"
                                          r"VLLM_SERVER_DEV_MODE=1"):
        gen.sync_weights(model)
    assert [p for _, p, _, _ in srv.requests].count("/collective_rpc") == 1
    assert (tmp_path / "policy.safetensors").is_file()  # written before the server was asked to load it
    gen.close()


def test_a_server_that_stops_answering_is_reported_dead(fake_vllm, tmp_path):
    srv = fake_vllm()
    gen = _client(srv, tmp_path)
    srv.close()
    with pytest.raises(EngineError, match=rf"vLLM server at {srv.root} does not answer GET /health "
                                          r"\(POST /reset_prefix_cache: .*failed after 3 attempts: ConnectError"):
        gen.reset_prefix_cache()
