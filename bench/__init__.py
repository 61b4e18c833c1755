"""Benchmarks that print ratios against a baseline measured in the same run (``python -m bench``).

Shared helpers: a small Qwen2 model with a chosen vocabulary, peak-memory and timing probes, and
the machine description recorded with every figure.

The default model body (:data:`BODY`) is a real small model scaled to a CPU: hidden 512, 8 layers,
8 query heads / 2 KV heads (head dim 64), MLP 1536, with the full Qwen vocabulary (151,936) and an
untied head: about 25M body parameters next to 2 x 78M embedding/head parameters, so the transformer
body, not only the output head, shows in the figures.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import threading
import time

import torch

QWEN_VOCAB = 151_936
BODY = {"hidden": 512, "layers": 8, "heads": 8, "kv_heads": 2, "intermediate": 1536}
"""Benchmark model body (Qwen2.5-0.5B's proportions scaled down to run on a few CPU cores)."""
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
"""glibc settings that hand freed large buffers back to the OS, so RSS peaks are comparable."""


def ensure_malloc_env(module: str) -> None:
    """Re-execute ``python -m module`` with :data:`MALLOC_ENV` when it is not set (CPU RSS probes)."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    os.environ.update(MALLOC_ENV)
    os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats after the warm-up (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--vocab and the body sizes, defaulting to :data:`BODY` with the Qwen vocabulary."""
    parser.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    for name, value in BODY.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)


def model_from_args(args):
    """The benchmark model named by :func:`add_model_args` options, on ``args.device`` in ``args.dtype``."""
    return tiny_qwen(args.vocab, args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate,
                     device=args.device, dtype=getattr(torch, args.dtype))


def describe_model(args) -> str:
    return (f"vocab {args.vocab}, hidden {args.hidden}, layers {args.layers}, heads {args.heads}/{args.kv_heads} kv,"
            f" intermediate {args.intermediate}, {args.dtype}")


def load_average() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def setup(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def machine(device: str) -> str:
    """One line naming the hardware and software the figures come from."""
    if device.startswith("cuda"):
        hw = torch.cuda.get_device_name(device)
    else:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
                   platform.processor())
        hw = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{hw}; torch {torch.__version__}; python {platform.python_version()}"


def tiny_qwen(vocab: int = QWEN_VOCAB, hidden: int = BODY["hidden"], layers: int = BODY["layers"],
              heads: int = BODY["heads"], kv_heads: int = BODY["kv_heads"], intermediate: int = BODY["intermediate"],
              max_positions: int = 65_536, device="cpu", dtype=torch.float32, seed=0):
    """A randomly initialised Qwen2ForCausalLM (no downloads), untied head, no EOS in its config."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, tie_word_embeddings=False,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return model


class IdTokenizer:
    """Stand-in tokenizer for id-level benchmarks: no stop token, decode names the ids."""

    eos_token_id = None
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak, or sampled RSS on CPU (``.peak`` bytes)."""

    def __init__(self, device: str, interval_s: float = 0.002):
        self.cuda = device.startswith("cuda")
        self.interval_s = interval_s
        self.peak = 0

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = _rss_bytes()
        self._max, self._stop = self.start, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss_bytes()) - self.start
        return False


def measure(fn, device: str, repeats: int = 1, warmup: int = 1) -> tuple[float, int]:
    """(median seconds, peak bytes above entry) of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times, peak = [], 0
    for _ in range(max(1, repeats)):
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = max(peak, mem.peak)
    return statistics.median(times), peak


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def ints(text: str) -> list[int]:
    """'4096,8192' -> [4096, 8192]."""
    return [int(x) for x in text.split(",") if x]
