"""Curriculum: length phases, the difficulty-aware retrospective pool, and the samplers."""

from longrl.curriculum.phases import PhaseSampler, phase_bounds, phase_of, sample_key, samples_for_phase
from longrl.curriculum.retro import MixedSampler, RetrospectivePool, difficulty_from_accuracy
from longrl.curriculum.samplers import CurriculumSampler, PhaseSpec, resolve_phases, source_weights

__all__ = [
    "CurriculumSampler", "MixedSampler", "PhaseSampler", "PhaseSpec", "RetrospectivePool",
    "difficulty_from_accuracy", "phase_bounds", "phase_of", "resolve_phases", "source_weights", "sample_key", "samples_for_phase",
]
