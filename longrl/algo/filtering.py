"""Group filtering and refill bookkeeping for DAPO dynamic sampling.

Equation
--------
DAPO (arXiv 2503.14476, Sec. 3.2 "Dynamic Sampling") trains only on groups that satisfy the constraint
of its objective, ``0 < |{o_i : is_equivalent(a, o_i)}| < G``: a group whose G rollouts are all right or
all wrong has zero advantage everywhere and only dilutes the batch. It over-samples and keeps drawing
until the batch holds enough informative groups. QwenLong-L1 (arXiv 2505.17667) trains with DAPO.

We filter on a chosen per-rollout metric, accuracy by default (``RLConfig.dynamic_sampling.metric``:
``acc`` | ``score``). Accuracy is the paper's criterion; the shaped score is not a safe substitute,
because overlong shaping gives different lengths different scores, so an all-wrong group can look
informative and be trained on with advantages that only encode length.

Differences from the verl DAPO recipe
-------------------------------------
* A group of one is dropped (zero variance, and its advantage is 0 here); the recipe keeps it.
* NaN / inf metric values raise ``ValueError`` instead of poisoning ``np.std``.
* Hitting the round cap either proceeds with a smaller batch (counted in the metrics) or raises,
  by ``on_cap``; the recipe always raises (unless its cap is 0 = unlimited).
* Surplus informative groups beyond the target are counted (``sampling/surplus_groups``), not silently
  sliced off.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from longrl.algo.advantages import check_finite

FILTER_METRICS = ("acc", "score")
"""Values of ``RLConfig.dynamic_sampling.metric``: which per-rollout quantity the caller passes."""
ON_CAP_POLICIES = ("proceed", "raise")
"""Values of ``RLConfig.dynamic_sampling.on_cap``."""


class DynamicSamplingError(RuntimeError):
    """The round cap was reached before the batch was full and the policy is ``raise``."""


def _ordered_ids(group_ids_N: torch.Tensor | Sequence[Hashable]) -> list[Hashable]:
    return group_ids_N.tolist() if isinstance(group_ids_N, torch.Tensor) else list(group_ids_N)


def zero_variance_groups(
    values_N: torch.Tensor | Sequence[float],
    group_ids_N: torch.Tensor | Sequence[Hashable],
    atol: float = 0.0,
) -> list[Hashable]:
    """Ids of the groups whose values are all equal (max - min <= ``atol``), in first-appearance order.

    A group of one counts as zero variance. ``values_N`` is usually per-rollout accuracy.
    """
    values_N = torch.as_tensor(values_N, dtype=torch.float64).reshape(-1)
    check_finite(values_N, "dynamic-sampling metric values")
    ids = _ordered_ids(group_ids_N)
    if len(ids) != values_N.numel():
        raise ValueError(f"{len(ids)} group ids for {values_N.numel()} values")
    lo: dict[Hashable, float] = {}
    hi: dict[Hashable, float] = {}
    for gid, v in zip(ids, values_N.tolist()):
        lo[gid] = min(lo.get(gid, v), v)
        hi[gid] = max(hi.get(gid, v), v)
    return [gid for gid in lo if hi[gid] - lo[gid] <= atol]


@dataclass
class DynamicBatch:
    """Refill bookkeeping for one training step: feed each generation round to :meth:`add_round`
    until :attr:`done`, then call :meth:`finish`.

    ``kept`` holds the informative group ids in arrival order (at most ``target_groups``), ``dropped``
    the zero-variance ones, ``surplus`` informative groups that arrived after the batch was full.
    """

    target_groups: int
    """Groups (prompts) wanted in the training batch."""
    max_rounds: int
    """Generation rounds allowed before the ``on_cap`` policy applies."""
    on_cap: str = "proceed"
    """'proceed' with what was kept, or 'raise' :class:`DynamicSamplingError`."""
    atol: float = 0.0
    """Values within this of each other count as equal."""
    kept: list[Hashable] = field(default_factory=list)
    dropped: list[Hashable] = field(default_factory=list)
    surplus: list[Hashable] = field(default_factory=list)
    rounds: int = 0

    def __post_init__(self) -> None:
        if self.target_groups < 1:
            raise ValueError(f"target_groups must be >= 1, got {self.target_groups}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")
        if self.on_cap not in ON_CAP_POLICIES:
            raise ValueError(f"on_cap must be one of {list(ON_CAP_POLICIES)}, got '{self.on_cap}'")

    @property
    def need(self) -> int:
        """Groups still missing."""
        return self.target_groups - len(self.kept)

    @property
    def full(self) -> bool:
        return self.need == 0

    @property
    def done(self) -> bool:
        """Stop generating: the batch is full or the round cap is reached."""
        return self.full or self.rounds >= self.max_rounds

    def add_round(
        self, values_N: torch.Tensor | Sequence[float], group_ids_N: torch.Tensor | Sequence[Hashable]
    ) -> torch.Tensor:
        """Record one round of rollouts; return ``keep_N`` (bool), True for the rollouts to train on."""
        if self.done:
            raise RuntimeError("add_round called after the dynamic batch is done")
        ids = _ordered_ids(group_ids_N)
        seen = set(self.kept) | set(self.dropped) | set(self.surplus)
        repeated = sorted({str(g) for g in ids if g in seen})
        if repeated:
            raise ValueError(f"group ids already seen in an earlier round: {repeated[:5]}")
        self.rounds += 1
        zero_var = set(zero_variance_groups(values_N, ids, self.atol))
        taken: set[Hashable] = set()
        for gid in dict.fromkeys(ids):
            if gid in zero_var:
                self.dropped.append(gid)
            elif self.full:
                self.surplus.append(gid)
            else:
                self.kept.append(gid)
                taken.add(gid)
        return torch.tensor([gid in taken for gid in ids], dtype=torch.bool)

    def finish(self) -> list[Hashable]:
        """The kept group ids; raises :class:`DynamicSamplingError` when short and ``on_cap == 'raise'``."""
        if not self.full and self.on_cap == "raise":
            raise DynamicSamplingError(
                f"dynamic sampling kept {len(self.kept)}/{self.target_groups} groups after {self.rounds} "
                f"round(s) ({len(self.dropped)} zero-variance groups dropped); raise "
                f"rl.dynamic_sampling.max_rounds or set on_cap: proceed"
            )
        return list(self.kept)

    def metrics(self) -> dict[str, float]:
        """``sampling/*`` counters for the step's log record."""
        return {
            "sampling/kept_groups": float(len(self.kept)),
            "sampling/filtered_groups": float(len(self.dropped)),
            "sampling/surplus_groups": float(len(self.surplus)),
            "sampling/rounds": float(self.rounds),
            "sampling/cap_hit": float(not self.full),
        }
