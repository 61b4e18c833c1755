"""The generator protocol every rollout backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

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


class Generator(Protocol):
    """Samples ``n`` completions for each prompt.

    A backend that does not share weights with the trainer (an OpenAI-compatible server) must be
    given the new weights between RL steps: the trainer saves a checkpoint and asks the server to
    reload it, or the rollouts are off-policy by the missed steps.
    """

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[list[Completion]]:
        """``result[i][j]`` is the j-th of ``n`` completions of ``prompt_ids[i]``."""
        ...
