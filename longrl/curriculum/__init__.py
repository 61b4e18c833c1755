"""Curriculum: length phases, the difficulty-aware retrospective pool, and the samplers."""

from longrl.curriculum.phases import PhaseSampler, phase_bounds, phase_of, sample_key, samples_for_phase
from longrl.curriculum.retro import MixedSampler, RetrospectivePool, difficulty_from_accuracy
from longrl.curriculum.samplers import CurriculumSampler, PhaseSpec, phase_specs

__all__ = [
    "CurriculumSampler", "MixedSampler", "PhaseSampler", "PhaseSpec", "RetrospectivePool",
    "difficulty_from_accuracy", "phase_bounds", "phase_of", "phase_specs", "sample_key", "samples_for_phase",
]
