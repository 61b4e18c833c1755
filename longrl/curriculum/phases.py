"""Length phases and the fresh-data sampler of one phase.

Phase k trains on samples whose prompt length ``n_tokens`` lies in ``(L_{k-1}, L_k]`` (``L_0 = 0``).
``PhaseSampler`` draws batches from one phase's samples: deterministic by seed, with mixture weights
by source and optional task-balanced batches (equal counts per task type, QwenLong-L1.5).

Randomness is counter-based: the permutation of a stream in epoch ``e`` and the choices of batch
``t`` come from ``random.Random`` seeded with strings such as ``"{seed}:perm:{stream}:{e}"``. So the
whole sampler state is a step counter and one (epoch, position) cursor per stream, which makes
``state_dict`` tiny, JSON-serialisable and exact on resume.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from typing import Any

from longrl.data.records import DocQASample


def sample_key(sample: DocQASample) -> str:
    """Globally unique key of a sample: ids are unique only within their source."""
    return f"{sample.source}/{sample.id}"


def fingerprint(keys: Iterable[str]) -> str:
    """Order-independent short hash of a set of sample keys (guards resumes against changed data)."""
    h = hashlib.sha256()
    for k in sorted(keys):
        h.update(k.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def phase_bounds(max_input_tokens: Sequence[int]) -> list[tuple[int, int]]:
    """``[L_1, L_2, ...] -> [(0, L_1), (L_1, L_2), ...]``; lengths must be positive and increasing."""
    bounds, prev = [], 0
    for i, hi in enumerate(max_input_tokens):
        if hi <= prev:
            raise ValueError(f"phase {i}: max_input_tokens must increase, got {hi} after {prev}")
        bounds.append((prev, int(hi)))
        prev = int(hi)
    return bounds


def samples_for_phase(samples: Iterable[DocQASample], lo: int, hi: int) -> list[DocQASample]:
    """The samples with ``lo < n_tokens <= hi``, in input order. Uncounted samples raise."""
    out = []
    for s in samples:
        if s.n_tokens < 0:
            raise ValueError(f"sample {sample_key(s)!r} has no token count (n_tokens={s.n_tokens})")
        if lo < s.n_tokens <= hi:
            out.append(s)
    return out


def phase_of(n_tokens: int, bounds: Sequence[tuple[int, int]]) -> int | None:
    """Index of the phase whose range holds ``n_tokens``; None when it is longer than the last phase."""
    for k, (lo, hi) in enumerate(bounds):
        if lo < n_tokens <= hi:
            return k
    return None


class PhaseSampler:
    """Batches of fresh samples for one phase.

    Samples are split into streams: one per source, or one per (source, task) when
    ``task_balanced``. Each stream is visited in a seeded permutation, reshuffled every epoch, so
    every sample of a stream is seen once before any repeats. For each batch slot the sampler picks
    a stream: by source weight (``weights_by_source``; None = equal weights), and in task-balanced
    mode first the task, giving each task present ``size // n_tasks`` slots and rotating the
    remainder across steps.
    """

    def __init__(self, samples: Sequence[DocQASample], batch_size: int, seed: int,
                 weights_by_source: dict[str, float] | None = None, task_balanced: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not samples:
            raise ValueError("PhaseSampler needs at least one sample")
        self.batch_size, self.seed, self.task_balanced = batch_size, seed, task_balanced
        self.samples = list(samples)
        self._streams = self._build_streams(self.samples, task_balanced)
        self._weights = self._source_weights(weights_by_source)
        self.tasks = sorted({task for _, task in self._streams})
        self._fingerprint = fingerprint(sample_key(s) for s in self.samples)
        self.step = 0
        self._cursors: dict[str, list[int]] = {self._name(k): [0, 0] for k in self._streams}
        self._perm_cache: dict[str, tuple[int, list[int]]] = {}

    @staticmethod
    def _build_streams(samples: Sequence[DocQASample], task_balanced: bool,
                       ) -> dict[tuple[str, str], list[DocQASample]]:
        streams: dict[tuple[str, str], list[DocQASample]] = {}
        for s in sorted(samples, key=sample_key):
            streams.setdefault((s.source, s.task if task_balanced else "*"), []).append(s)
        return streams

    def _source_weights(self, weights: dict[str, float] | None) -> dict[str, float]:
        sources = sorted({src for src, _ in self._streams})
        if weights is None:
            return dict.fromkeys(sources, 1.0)
        missing = [s for s in sources if s not in weights]
        if missing:
            raise ValueError(f"weights_by_source has no weight for sources {missing}")
        if any(weights[s] <= 0 for s in sources):
            raise ValueError(f"source weights must be > 0, got {weights}")
        return {s: float(weights[s]) for s in sources}

    @staticmethod
    def _name(key: tuple[str, str]) -> str:
        return f"{key[0]}|{key[1]}"

    def __len__(self) -> int:
        return len(self.samples)

    # ---------------------------------------------------------------- drawing
    def _perm(self, key: tuple[str, str], epoch: int) -> list[int]:
        name = self._name(key)
        cached = self._perm_cache.get(name)
        if cached is None or cached[0] != epoch:
            order = list(range(len(self._streams[key])))
            random.Random(f"{self.seed}:perm:{name}:{epoch}").shuffle(order)
            cached = self._perm_cache[name] = (epoch, order)
        return cached[1]

    def _take(self, key: tuple[str, str]) -> DocQASample:
        cur = self._cursors[self._name(key)]
        stream = self._streams[key]
        sample = stream[self._perm(key, cur[0])[cur[1]]]
        cur[1] += 1
        if cur[1] == len(stream):
            cur[0], cur[1] = cur[0] + 1, 0
        return sample

    def _slot_tasks(self, size: int) -> list[str]:
        """Task of each slot of batch ``self.step`` (task-balanced mode)."""
        n = len(self.tasks)
        slots = [t for t in self.tasks for _ in range(size // n)]
        slots += [self.tasks[(self.step + i) % n] for i in range(size % n)]
        return slots

    def _pick_stream(self, rng: random.Random, task: str) -> tuple[str, str]:
        keys = [k for k in self._streams if k[1] == task]
        weights = [self._weights[k[0]] for k in keys]
        return rng.choices(keys, weights=weights, k=1)[0]

    def next_batch(self, size: int | None = None) -> list[DocQASample]:
        """The next ``size`` samples (default ``batch_size``); advances the step counter by one."""
        size = self.batch_size if size is None else size
        rng = random.Random(f"{self.seed}:batch:{self.step}")
        tasks = self._slot_tasks(size) if self.task_balanced else ["*"] * size
        batch = [self._take(self._pick_stream(rng, task)) for task in tasks]
        self.step += 1
        return batch

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: step counter and per-stream (epoch, position) cursors."""
        return {"step": self.step, "cursors": {k: list(v) for k, v in self._cursors.items()},
                "fingerprint": self._fingerprint, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["fingerprint"] != self._fingerprint or state["seed"] != self.seed:
            raise ValueError("PhaseSampler state was saved for different samples or seed")
        if set(state["cursors"]) != set(self._cursors):
            raise ValueError("PhaseSampler state has different streams")
        self.step = int(state["step"])
        self._cursors = {k: [int(v[0]), int(v[1])] for k, v in state["cursors"].items()}
