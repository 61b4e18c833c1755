"""The one record type every reader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TASK_TYPES = ("qa", "numeric", "mcq")
"""Task types: free-form document QA, numeric (DocMath-style), multiple choice."""


class RecordError(ValueError):
    """A malformed input record: names the file, the line or row, and the field."""

    def __init__(self, path: str, where: int | str, field_name: str, message: str):
        self.path, self.where, self.field_name = path, where, field_name
        super().__init__(f"{path}:{where}: field '{field_name}': {message}")


@dataclass
class DocQASample:
    id: str
    """Unique within its source."""
    source: str
    """Dataset name (e.g. 'hotpotqa', 'docmath', 'synthetic'); drives reward dispatch."""
    task: str
    """One of TASK_TYPES."""
    document: str
    """The long context."""
    question: str
    """The question (with answer options for multiple choice)."""
    answers: list[str]
    """Gold answers (any one is correct)."""
    n_tokens: int = -1
    """Prompt length in policy tokens; -1 until counted."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Anything else the source carries (reasoning traces, difficulty, family, ...)."""

    def __post_init__(self) -> None:
        if self.task not in TASK_TYPES:
            raise ValueError(f"sample {self.id!r}: task must be one of {TASK_TYPES}, got {self.task!r}")

    @property
    def answer(self) -> str:
        """The first gold answer."""
        return self.answers[0] if self.answers else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DocQASample:
        return cls(**d)


def task_for_source(data_source: str) -> str:
    """Scorer task for a verl data_source: 'docmath' -> numeric; 'long_toc_choices'/'mcq' -> mcq; else qa."""
    name = data_source.lower()
    if "docmath" in name:
        return "numeric"
    if "long_toc_choices" in name or "mcq" in name:
        return "mcq"
    return "qa"
