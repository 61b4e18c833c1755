"""The curriculum driver: phases in order, fresh samples mixed with the retrospective pool.

``CurriculumSampler`` is what a trainer holds: ``next_batch()`` each step, ``record()`` after
scoring, ``advance()`` at a phase boundary, and one JSON-serialisable ``state_dict`` for all of it
(phase index, fresh-sampler cursors, mixing counters, pool statistics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longrl.config import Config, ConfigError, CurriculumConfig, SourceConfig
from longrl.curriculum.phases import PhaseSampler, phase_bounds, samples_for_phase
from longrl.curriculum.retro import MixedSampler, RetrospectivePool
from longrl.data.records import DocQASample


@dataclass
class PhaseSpec:
    """One phase, resolved once (:func:`resolve_phases`): what the sampler draws and what the trainer runs."""

    max_input_tokens: int
    """L_k: the phase draws fresh samples with n_tokens in (L_{k-1}, L_k]."""
    max_output_tokens: int = 0
    """Output budget; pool samples whose responses were longer are dropped (0 = no check)."""
    weights_by_source: dict[str, float] | None = None
    """Mixture weights by source (None = equal)."""
    name: str = ""
    """Used in error messages and logs."""
    samples: list[DocQASample] | None = None
    """The phase's own samples (read from ``curriculum.phases[k].sources``); None = the shared samples."""
    steps: int = 0
    """Optimizer steps of the phase (``curriculum.phases[k].steps``, else ``rl.steps``)."""
    temperature: float = -1.0
    """Rollout temperature of the phase (``curriculum.phases[k].temperature``, else ``rollout.temperature``;
    negative = the run's ``rollout.temperature``)."""


def source_name(src: SourceConfig) -> str:
    """The name a source's weight is looked up by: ``name``, else the file stem."""
    return src.name or Path(src.path).stem


def source_weights(sources: Sequence[SourceConfig], samples: Sequence[DocQASample], where: str,
                   ) -> dict[str, float] | None:
    """Mixture weights by source name; None when every weight is equal (uniform mixing).

    With unequal weights every source name among ``samples`` must have a weight, else a ConfigError at
    ``where`` (a reader may name samples by their records, e.g. verl ``data_source``: set ``name``).
    """
    weights = {source_name(src): float(src.weight) for src in sources}
    if len(set(weights.values())) <= 1:
        return None
    unweighted = sorted({s.source for s in samples} - set(weights))
    if unweighted:
        raise ConfigError(where, f"samples carry source names {unweighted} that no weight is given for "
                                 f"(weights by name: {weights}); set each source's name to the name its samples carry")
    return weights


def resolve_phases(cfg: CurriculumConfig, data_sources: Sequence[SourceConfig], samples: Sequence[DocQASample],
                   default_output_tokens: int = 0,
                   phase_samples: Mapping[int, Sequence[DocQASample]] | None = None, *, default_steps: int = 0,
                   default_temperature: float = -1.0) -> list[PhaseSpec]:
    """THE resolution of every phase setting: length range, output budget, steps, temperature, samples and
    source weights (``default_*``: ``rollout.max_new_tokens``, ``rl.steps``, ``rollout.temperature``).

    A phase without ``sources`` draws from ``samples`` (read from ``data.sources``) with the weights of
    ``data.sources``; a phase with ``sources`` draws from ``phase_samples[k]`` (those files, read and
    token-counted by the caller, e.g. ``longrl.pipeline.load_data``) with their weights. No phases = one
    phase covering every sample.
    """
    phase_samples = phase_samples or {}
    default_weights = source_weights(data_sources, samples, "data.sources")
    if not cfg.phases:
        longest = max((s.n_tokens for s in samples), default=1)
        return [PhaseSpec(max(1, longest), default_output_tokens, default_weights, "all", None, default_steps,
                          default_temperature)]
    specs = []
    for k, ph in enumerate(cfg.phases):
        own, weights = None, default_weights
        if ph.sources:
            if k not in phase_samples:
                raise ConfigError(f"curriculum.phases[{k}].sources",
                                  "these files were not read: pass their samples as phase_samples[k]")
            own = list(phase_samples[k])
            weights = source_weights(ph.sources, own, f"curriculum.phases[{k}].sources")
        specs.append(PhaseSpec(ph.max_input_tokens, ph.max_output_tokens or default_output_tokens, weights,
                               ph.name or f"phase{k + 1}", own, ph.steps or default_steps,
                               default_temperature if ph.temperature < 0 else ph.temperature))
    return specs


class CurriculumSampler:
    """Phase-by-phase batches; from the second phase on, ``retro_fraction`` of each batch comes
    from the retrospective pool (when ``retro_enabled``)."""

    def __init__(self, samples: Sequence[DocQASample], phases: Sequence[PhaseSpec], batch_size: int,
                 seed: int, task_balanced: bool = False, retro_enabled: bool = True,
                 retro_fraction: float = 0.25, hard_threshold: float = 0.5, cap: int = 1000):
        if not phases:
            raise ValueError("CurriculumSampler needs at least one phase")
        self.samples, self.phases = list(samples), list(phases)
        self.bounds = phase_bounds([p.max_input_tokens for p in self.phases])
        self.batch_size, self.seed, self.task_balanced = batch_size, seed, task_balanced
        self.retro_enabled, self.retro_fraction = retro_enabled, retro_fraction
        self.pool = RetrospectivePool(hard_threshold, cap, seed)
        self.phase = 0
        self.global_step = 0
        self.sampler = self._build(0)

    @classmethod
    def from_config(cls, samples: Sequence[DocQASample], cfg: CurriculumConfig, batch_size: int, seed: int,
                    default_output_tokens: int = 0, data_sources: Sequence[SourceConfig] = (),
                    phase_samples: Mapping[int, Sequence[DocQASample]] | None = None, *, default_steps: int = 0,
                    default_temperature: float = -1.0) -> CurriculumSampler:
        """The sampler for ``cfg``'s phases as :func:`resolve_phases` resolves them."""
        r = cfg.retrospective
        specs = resolve_phases(cfg, data_sources, samples, default_output_tokens, phase_samples,
                               default_steps=default_steps, default_temperature=default_temperature)
        return cls(samples, specs, batch_size, seed, cfg.task_balanced, r.enabled, r.fraction, r.hard_threshold, r.cap)

    @classmethod
    def for_run(cls, samples: Sequence[DocQASample], cfg: Config,
                phase_samples: Mapping[int, Sequence[DocQASample]] | None = None) -> CurriculumSampler:
        """The sampler of a run's whole :class:`~longrl.config.Config`: ``curriculum`` resolved with the
        defaults of ``rollout``/``rl``/``data.sources``, ``rl.prompts_per_step`` samples a batch, ``seed``."""
        return cls.from_config(samples, cfg.curriculum, cfg.rl.prompts_per_step, cfg.seed, cfg.rollout.max_new_tokens,
                               cfg.data.sources, phase_samples, default_steps=cfg.rl.steps,
                               default_temperature=cfg.rollout.temperature)

    @property
    def spec(self) -> PhaseSpec:
        """The current phase's resolved settings (what the trainer runs it with)."""
        return self.phases[self.phase]

    def _build(self, k: int) -> MixedSampler:
        lo, hi = self.bounds[k]
        own = self.phases[k].samples
        fresh = samples_for_phase(self.samples if own is None else own, lo, hi)
        if not fresh:
            raise ValueError(f"phase {self.phases[k].name or k!r} has no samples with n_tokens in ({lo}, {hi}]")
        ps = PhaseSampler(fresh, self.batch_size, self.seed * 1000 + k, self.phases[k].weights_by_source,
                          self.task_balanced)
        fraction = self.retro_fraction if self.retro_enabled and k > 0 else 0.0
        return MixedSampler(ps, self.pool, fraction, self.seed * 1000 + k)

    @property
    def is_last_phase(self) -> bool:
        return self.phase == len(self.phases) - 1

    def next_batch(self) -> list[DocQASample]:
        self.global_step += 1
        return self.sampler.next_batch()

    def record(self, sample: DocQASample, accs: list[float], response_tokens: list[int] | None = None) -> None:
        """Rollout accuracies of ``sample`` from the batch last returned by ``next_batch``."""
        self.pool.record(sample, accs, self.global_step, response_tokens)

    def advance(self) -> dict[str, Any]:
        """Move to the next phase: rebuild the pool for it and start its fresh sampler.
        Returns what the finished phase served (``curriculum/*``) and the new pool (``retro/*``)."""
        if self.is_last_phase:
            raise ValueError("advance() called in the last phase")
        summary = {k: v for k, v in self.sampler.summary().items() if k.startswith("curriculum/")}
        self.phase += 1
        if self.retro_enabled:
            lo, hi = self.bounds[self.phase]
            summary |= self.pool.transition(lo, hi, self.phases[self.phase].max_output_tokens)
        self.sampler = self._build(self.phase)
        return summary

    def summary(self) -> dict[str, Any]:
        """Current phase and the composition served in it so far."""
        return {"curriculum/phase": self.phase} | self.sampler.summary()

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "global_step": self.global_step, "sampler": self.sampler.state_dict(),
                "pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase, self.global_step = int(state["phase"]), int(state["global_step"])
        self.pool.load_state_dict(state["pool"], self.samples + [s for p in self.phases for s in p.samples or ()])
        self.sampler = self._build(self.phase)
        self.sampler.load_state_dict(state["sampler"])
