"""Difficulty-aware retrospective sampling (QwenLong-L1, section 3.3).

During a phase the pool records, for every sample, the accuracies of all its rollouts. At a phase
transition every sample that is not solved (difficulty > 0, at least ``hard_threshold``) and still fits
the next phase's budgets joins the pool; when there are more candidates than ``cap``, the pool is a
uniform random sample of them, so it keeps the candidates' spread of difficulties instead of holding
only the hardest. In the next phase ``MixedSampler`` mixes a fraction of pool samples into each fresh
batch, drawn in proportion to difficulty (so what is served is in proportion to difficulty across the
whole range, as the paper samples), and counts what it served by difficulty.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from longrl.curriculum.phases import PhaseSampler, sample_key
from longrl.data.records import DocQASample

HIST_BINS = 10
"""Difficulty histogram bins over [0, 1] in composition summaries."""


@dataclass
class SampleStats:
    """Rollout accuracy statistics of one sample across everything recorded so far."""

    acc_sum: float = 0.0
    count: int = 0
    last_step: int = -1
    resp_tokens_sum: float = 0.0
    resp_count: int = 0

    @property
    def mean_acc(self) -> float:
        return self.acc_sum / self.count if self.count else 0.0

    @property
    def mean_resp_tokens(self) -> float | None:
        return self.resp_tokens_sum / self.resp_count if self.resp_count else None


def difficulty_from_accuracy(mean_acc: float) -> float:
    """Difficulty = ``1 - mean accuracy``, in [0, 1].

    The paper weights samples by "inverse mean reward". The literal ``1 / r`` is unbounded (a sample
    never solved has r = 0 and would take all the probability mass, and shaped rewards can be
    negative), so we use the bounded, monotone-decreasing form ``1 - acc`` on rollout accuracy
    (correctness in [0, 1], before overlong shaping). It is the probability that a fresh rollout
    fails, so drawing in proportion to it spends retrospective slots where failures are likely, and a
    solved sample (acc = 1) gets weight 0.
    """
    return 1.0 - min(1.0, max(0.0, mean_acc))


def difficulty_histogram(values: Iterable[float], bins: int = HIST_BINS) -> list[int]:
    """Counts over ``bins`` equal bins of [0, 1]; 1.0 falls into the last bin."""
    hist = [0] * bins
    for v in values:
        hist[min(bins - 1, max(0, int(v * bins)))] += 1
    return hist


class RetrospectivePool:
    """Per-sample rollout accuracies plus the set of hard samples carried into later phases.

    ``seen`` holds every sample recorded since construction (its stats persist across phases, so a
    retrospective sample re-drawn later keeps accumulating); ``members`` is the current pool, set by
    ``transition``. ``state_dict`` stores keys and statistics only, never documents: pass the
    samples to ``load_state_dict`` to resolve them (documents can be 100K tokens long).
    """

    def __init__(self, hard_threshold: float = 0.5, cap: int = 1000, seed: int = 0):
        if not 0.0 <= hard_threshold <= 1.0:
            raise ValueError(f"hard_threshold must be in [0, 1], got {hard_threshold}")
        if cap < 0:
            raise ValueError(f"cap must be >= 0, got {cap}")
        self.hard_threshold, self.cap, self.seed = hard_threshold, cap, seed
        self.stats: dict[str, SampleStats] = {}
        self.seen: dict[str, DocQASample] = {}
        self.members: list[str] = []
        self.transitions = 0

    def __len__(self) -> int:
        return len(self.members)

    def samples(self) -> list[DocQASample]:
        """The current pool members, in pool order."""
        return [self.seen[k] for k in self.members]

    # ---------------------------------------------------------------- recording
    def record(self, sample: DocQASample, accs: list[float], step: int = -1,
               response_tokens: list[int] | None = None) -> None:
        """Add the rollout accuracies (each clipped to [0, 1]) of ``sample`` seen at ``step``.

        ``response_tokens`` (optional, one per rollout) lets ``transition`` drop samples whose
        responses would not fit the next phase's output budget.
        """
        key = sample_key(sample)
        st = self.stats.setdefault(key, SampleStats())
        self.seen[key] = sample
        st.acc_sum += sum(min(1.0, max(0.0, float(a))) for a in accs)
        st.count += len(accs)
        st.last_step = max(st.last_step, step)
        if response_tokens:
            st.resp_tokens_sum += float(sum(response_tokens))
            st.resp_count += len(response_tokens)

    def difficulty(self, sample: DocQASample | str) -> float:
        """Difficulty of a recorded sample (or its ``sample_key``); KeyError if never recorded."""
        key = sample if isinstance(sample, str) else sample_key(sample)
        st = self.stats[key]
        if st.count == 0:
            raise KeyError(f"{key!r} has no recorded rollouts")
        return difficulty_from_accuracy(st.mean_acc)

    # ---------------------------------------------------------------- transition
    def transition(self, next_lo: int, next_hi: int, max_output_tokens: int = 0) -> dict[str, Any]:
        """Rebuild the pool for the phase with inputs in ``(next_lo, next_hi]``.

        Candidates are all samples ever recorded (members included). A candidate qualifies when its
        difficulty is > 0 and >= ``hard_threshold``, its ``n_tokens <= next_hi`` and (when
        ``max_output_tokens > 0`` and response lengths were recorded) its mean response length is
        <= ``max_output_tokens``. When more than ``cap`` qualify, ``cap`` of them are chosen uniformly
        at random (seeded by ``seed`` and the transition count): keeping the hardest would leave only
        never-solved samples, while a uniform subsample keeps the candidates' difficulty spread, and
        ``draw`` weights by difficulty. Returns the drop counts, the candidates' difficulty histogram
        and the new pool's composition (``summary``).
        """
        if next_hi <= next_lo:
            raise ValueError(f"empty phase range ({next_lo}, {next_hi}]")
        drops = Counter()
        kept = []
        for key in sorted(k for k, st in self.stats.items() if st.count):
            reason = self._drop_reason(key, next_hi, max_output_tokens)
            if reason:
                drops[reason] += 1
            else:
                kept.append(key)
        candidates = difficulty_histogram(self.difficulty(k) for k in kept)
        if len(kept) > self.cap:
            kept = random.Random(f"{self.seed}:pool:{self.transitions}").sample(kept, self.cap)
        drops["cap"] = sum(candidates) - len(kept)
        self.members = sorted(kept, key=lambda k: (-self.difficulty(k), -self.stats[k].last_step, k))
        self.transitions += 1
        out = {f"retro/dropped_{r}": drops.get(r, 0) for r in ("easy", "input_budget", "output_budget", "cap")}
        return out | {"retro/candidate_hist": candidates} | self.summary()

    def _drop_reason(self, key: str, next_hi: int, max_output_tokens: int) -> str:
        d = self.difficulty(key)
        if d <= 0.0 or d < self.hard_threshold:
            return "easy"
        if self.seen[key].n_tokens > next_hi:
            return "input_budget"
        resp = self.stats[key].mean_resp_tokens
        if max_output_tokens > 0 and resp is not None and resp > max_output_tokens:
            return "output_budget"
        return ""

    def summary(self) -> dict[str, Any]:
        """Composition of the current pool: size, per source and per question family (when samples carry
        ``metadata["family"]``), difficulty histogram and mean."""
        diffs = [self.difficulty(k) for k in self.members]
        by_source = Counter(self.seen[k].source for k in self.members)
        by_family = Counter(self.seen[k].metadata.get("family") for k in self.members)
        by_family.pop(None, None)
        out: dict[str, Any] = {
            "retro/pool_size": len(self.members),
            "retro/mean_difficulty": sum(diffs) / len(diffs) if diffs else 0.0,
            "retro/difficulty_hist": difficulty_histogram(diffs),
        }
        out.update({f"retro/source/{src}": n for src, n in sorted(by_source.items())})
        out.update({f"retro/family/{fam}": n for fam, n in sorted(by_family.items())})
        return out

    # ---------------------------------------------------------------- drawing
    def draw(self, k: int, rng: random.Random, replace: bool = False) -> list[DocQASample]:
        """``k`` pool members with probability proportional to difficulty.

        Without replacement (the default) draws are sequential, each proportional to the remaining
        difficulties, and at most the number of members with positive difficulty are returned.
        """
        keys = [m for m in self.members if self.difficulty(m) > 0]
        weights = [self.difficulty(m) for m in keys]
        if not keys or k <= 0:
            return []
        if replace:
            return [self.seen[m] for m in rng.choices(keys, weights=weights, k=k)]
        out = []
        for _ in range(min(k, len(keys))):
            i = rng.choices(range(len(keys)), weights=weights, k=1)[0]
            out.append(self.seen[keys.pop(i)])
            weights.pop(i)
        return out

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable: thresholds, per-sample statistics and member keys (no documents)."""
        return {
            "hard_threshold": self.hard_threshold, "cap": self.cap, "seed": self.seed, "transitions": self.transitions,
            "members": list(self.members),
            "stats": {k: [st.acc_sum, st.count, st.last_step, st.resp_tokens_sum, st.resp_count]
                      for k, st in self.stats.items()},
        }

    def load_state_dict(self, state: dict[str, Any], samples: Iterable[DocQASample] = ()) -> None:
        """Restore from ``state_dict``; sample keys resolve against ``samples`` and those already held."""
        catalog = dict(self.seen)
        catalog.update((sample_key(s), s) for s in samples)
        missing = [k for k in state["stats"] if k not in catalog]
        if missing:
            raise ValueError(f"{len(missing)} pool samples not found among the given samples, e.g. {missing[:3]}")
        self.hard_threshold, self.cap = float(state["hard_threshold"]), int(state["cap"])
        self.seed = int(state.get("seed", self.seed))
        self.transitions = int(state["transitions"])
        self.members = list(state["members"])
        self.stats = {k: SampleStats(float(v[0]), int(v[1]), int(v[2]), float(v[3]), int(v[4]))
                      for k, v in state["stats"].items()}
        self.seen = {k: catalog[k] for k in self.stats}


def retro_count(step: int, batch_size: int, fraction: float) -> int:
    """Pool slots in batch ``step``: ``floor((t+1) f B) - floor(t f B)``, so over T steps exactly
    ``floor(T f B)`` slots go to the pool and no per-step RNG is needed."""
    fb = fraction * batch_size
    return int((step + 1) * fb + 1e-9) - int(step * fb + 1e-9)


class MixedSampler:
    """Fresh batches from a ``PhaseSampler`` with a ``fraction`` of slots drawn from the pool.

    Slots the pool cannot fill (empty pool, or fewer members with positive difficulty than slots)
    go to fresh samples, so every batch has ``fresh.batch_size`` samples. The pool itself is shared
    across phases and is checkpointed by its owner, not by this sampler.
    """

    def __init__(self, fresh: PhaseSampler, pool: RetrospectivePool, fraction: float, seed: int):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        self.fresh, self.pool, self.fraction, self.seed = fresh, pool, fraction, seed
        self.step = 0
        self.counts = Counter()
        self.served_hist = [0] * HIST_BINS

    def next_batch(self) -> list[DocQASample]:
        """Pool samples first, then fresh ones; records the composition for ``summary``."""
        size = self.fresh.batch_size
        rng = random.Random(f"{self.seed}:retro:{self.step}")
        retro = self.pool.draw(retro_count(self.step, size, self.fraction), rng)
        batch = retro + self.fresh.next_batch(size - len(retro))
        for i, v in enumerate(difficulty_histogram(self.pool.difficulty(s) for s in retro)):
            self.served_hist[i] += v
        self.counts["retro"] += len(retro)
        self.counts["fresh"] += size - len(retro)
        self.step += 1
        return batch

    def summary(self) -> dict[str, Any]:
        """Samples served so far (fresh vs retrospective, the latter's difficulty histogram at the time each
        was drawn) and the pool's composition."""
        total = self.counts["fresh"] + self.counts["retro"]
        return {"curriculum/fresh_samples": self.counts["fresh"], "curriculum/retro_samples": self.counts["retro"],
                "curriculum/retro_fraction": self.counts["retro"] / total if total else 0.0,
                "curriculum/retro_served_hist": list(self.served_hist)} | self.pool.summary()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "counts": dict(self.counts), "served_hist": list(self.served_hist),
                "fresh": self.fresh.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.counts = Counter({k: int(v) for k, v in state["counts"].items()})
        self.served_hist = [int(v) for v in state.get("served_hist", [0] * HIST_BINS)]
        self.fresh.load_state_dict(state["fresh"])
