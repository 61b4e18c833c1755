"""Rollout backends behind one small protocol: ``Generator.generate(prompt_ids, n, ...)``."""

from longrl.rollout.base import Completion, FinishReason, Generator

__all__ = ["Completion", "FinishReason", "Generator"]
