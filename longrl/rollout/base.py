"""The generator protocol every rollout backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    """One sampled continuation of a prompt.

    ``token_ids`` holds the generated tokens only (not the prompt), including the stop token when
    generation ended on one; ``text`` is their decoding without special tokens.
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    """'stop': ended on an end-of-sequence token; 'length': hit max_new_tokens."""
    logprobs: list[float] | None = None
    """The engine's log-probability of each sampled token (log mu, at the sampling temperature), one per
    ``token_ids`` entry, when the backend reports them (vLLM); None otherwise."""


class Generator(abc.ABC):
    """Samples ``n`` completions for each prompt; every rollout backend subclasses it.

    The trainer calls the lifecycle methods unconditionally; their defaults fit a backend that shares
    the trainer's weights in memory (the in-process HF one). A backend with its own copy of the weights
    (vLLM, an OpenAI-compatible server) overrides :meth:`sync_weights` / :meth:`update_weights`, or its
    rollouts are off-policy by the missed steps.
    """

    shared_across_processes: bool = False
    """True when every training process talks to one engine (a server): only the main process syncs it."""

    @abc.abstractmethod
    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[list[Completion]]:
        """``result[i][j]`` is the j-th of ``n`` completions of ``prompt_ids[i]``."""

    def reseed(self, seed: int | None) -> None:
        """Seed the sampling of the next :meth:`generate` call (None: unseeded)."""
        return None  # default: nothing to do (weights shared in memory)

    def sync_weights(self, model) -> None:
        """Load ``model``'s current weights before the first step of a run (or a resumed run)."""
        return None  # default: nothing to do (weights shared in memory)

    def update_weights(self, model, step: int) -> None:
        """Called after optimizer step ``step`` (1-based) with the updated policy."""
        return None  # default: nothing to do (weights shared in memory)

    def close(self) -> None:
        """Release what the backend started (an engine, a server process, a connection pool)."""
        return None  # default: nothing to do (weights shared in memory)
