"""Name registries for what a user picks by name in a config (advantage estimator, KL estimator, loss
aggregation): one dispatch style, a duplicate name is an error, an unknown one names the choices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict[str, F], Generic[F]):
    """``{name: function}`` filled by the :meth:`register` decorator."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        """What the names name, for error messages ('advantage mode', 'KL estimator', ...)."""

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding ``fn`` under ``name``; a name registered twice is a ValueError."""

        def deco(fn: F) -> F:
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self[name] = fn
            return fn

        return deco

    def lookup(self, name: str) -> F:
        """The function registered as ``name``; ValueError naming the choices when there is none."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} '{name}'; choose from {sorted(self)}")
        return self[name]
