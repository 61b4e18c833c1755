"""Outcome advantages for group-sampled rollouts (GRPO family), as pure tensor functions.

Equations
---------
* ``grpo`` -- GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, Eq. 4 and the outcome-supervision
  paragraph of Sec. 4.1.2): ``A_i = (r_i - mean_g) / (std_g + eps)`` over the G rollouts of one prompt;
  the same normalisation is used by DAPO (arXiv 2503.14476) and QwenLong-L1 (arXiv 2505.17667).
* ``drgrpo`` -- Dr. GRPO (Liu et al. 2025, arXiv 2503.20783, Sec. 3.1): ``A_i = r_i - mean_g``,
  no division by the std (removes the question-difficulty bias).
* ``batch_std`` -- group-mean baseline, std over the whole batch (TRL ``scale_rewards="batch"``).
* ``task_std`` -- QwenLong-L1.5 task-specific advantage (arXiv 2512.12967, Eq. 7):
  ``A_i = (r_i - mean_g) / (std({r_k : task(k) == task(i), k in batch}) + eps)``. Our reading, checked
  against the authors' released ``compute_grpo_task_norm_outcome_advantage``: the baseline stays the
  group mean; only the scale is the std of every reward of the same task type in the current batch.

All stds are unbiased (Bessel, ``n - 1``), as ``torch.std`` in verl and TRL.

Deliberate differences from verl / TRL
--------------------------------------
* A group of one gets advantage exactly 0 in every mode. verl (and the QwenLong-L1.5 snippet) set the
  mean of a singleton group to 0 and the std to 1, so a lone rollout gets ``A = r / (1 + eps)``: a
  reward-sized update with no baseline. We treat one sample as carrying no relative information.
* NaN / inf rewards raise ``ValueError`` naming the indices. TRL treats NaN as "unscorable" and uses
  nan-aware statistics; here a reward that could not be computed must be handled (dropped or scored) by
  the caller, never averaged over silently.
* ``eps`` defaults to 1e-6 (verl); TRL uses 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from longrl.algo.registry import Registry

AdvantageFn = Callable[..., torch.Tensor]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage mode")
"""Name -> estimator ``fn(rewards_N, group_index_N, num_groups, eps, task_index_N) -> adv_N``;
the names are the values of ``AlgoConfig.advantage``."""

register_advantage_estimator = ADVANTAGE_ESTIMATORS.register
"""Decorator adding an estimator to :data:`ADVANTAGE_ESTIMATORS`; a duplicate name is an error."""


def index_ids(ids_N: torch.Tensor | Sequence[Hashable]) -> tuple[torch.Tensor, int]:
    """Map arbitrary ids (tensor, list of str/int, numpy array) to dense indices.

    Returns ``(index_N, num_unique)``; for non-tensor ids the dense index follows first appearance.
    """
    if isinstance(ids_N, torch.Tensor):
        if ids_N.dim() != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids_N.shape)}")
        uniq, index_N = torch.unique(ids_N, return_inverse=True)
        return index_N, int(uniq.numel())
    mapping: dict[Hashable, int] = {}
    index = [mapping.setdefault(x, len(mapping)) for x in ids_N]
    return torch.tensor(index, dtype=torch.long), len(mapping)


def check_finite(values_N: torch.Tensor, name: str = "rewards") -> None:
    """Raise ``ValueError`` naming the first offending indices when ``values_N`` holds NaN or inf."""
    bad = ~torch.isfinite(values_N)
    if bool(bad.any()):
        where = bad.nonzero().flatten()[:8].tolist()
        raise ValueError(
            f"{name} contain {int(bad.sum())} non-finite value(s) (NaN/inf) at indices {where}; "
            f"score or drop those rollouts before computing advantages"
        )


def segment_mean_std(
    values_N: torch.Tensor, index_N: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment mean and unbiased std, ``(mean_S, std_S)``; a segment of one has std 0."""
    zeros_S = values_N.new_zeros(num_segments)
    count_S = zeros_S.index_add(0, index_N, torch.ones_like(values_N))
    mean_S = zeros_S.index_add(0, index_N, values_N) / count_S.clamp(min=1)
    sq_dev_N = (values_N - mean_S[index_N]) ** 2
    var_S = zeros_S.index_add(0, index_N, sq_dev_N) / (count_S - 1).clamp(min=1)
    return mean_S, var_S.sqrt()


def _centered(rewards_N: torch.Tensor, group_index_N: torch.Tensor, num_groups: int) -> torch.Tensor:
    mean_G, _ = segment_mean_std(rewards_N, group_index_N, num_groups)
    return rewards_N - mean_G[group_index_N]


def _scaled(centered_N: torch.Tensor, std_N: torch.Tensor, eps: float) -> torch.Tensor:
    """centered / (std + eps), with 0 where the denominator is 0 (eps = 0 and a constant group)."""
    denom_N = std_N + eps
    return torch.where(denom_N > 0, centered_N / denom_N.clamp(min=torch.finfo(denom_N.dtype).tiny), 0.0)


def _group_std_N(rewards_N: torch.Tensor, group_index_N: torch.Tensor, num_groups: int) -> torch.Tensor:
    _, std_G = segment_mean_std(rewards_N, group_index_N, num_groups)
    return std_G[group_index_N]


@register_advantage_estimator("grpo")
def grpo_advantage(rewards_N, group_index_N, num_groups, eps, task_index_N=None):
    """GRPO: (r - mean_g) / (std_g + eps)."""
    std_N = _group_std_N(rewards_N, group_index_N, num_groups)
    return _scaled(_centered(rewards_N, group_index_N, num_groups), std_N, eps)


@register_advantage_estimator("drgrpo")
def drgrpo_advantage(rewards_N, group_index_N, num_groups, eps, task_index_N=None):
    """Dr. GRPO: r - mean_g (``eps`` unused)."""
    return _centered(rewards_N, group_index_N, num_groups)


@register_advantage_estimator("batch_std")
def batch_std_advantage(rewards_N, group_index_N, num_groups, eps, task_index_N=None):
    """(r - mean_g) / (std over the whole batch + eps)."""
    std = rewards_N.std() if rewards_N.numel() > 1 else rewards_N.new_zeros(())
    return _scaled(_centered(rewards_N, group_index_N, num_groups), std.expand_as(rewards_N), eps)


@register_advantage_estimator("task_std")
def task_std_advantage(rewards_N, group_index_N, num_groups, eps, task_index_N=None):
    """QwenLong-L1.5 Eq. 7: (r - mean_g) / (std over the batch samples of the same task + eps)."""
    if task_index_N is None:
        raise ValueError("advantage mode 'task_std' needs task_ids_N")
    num_tasks = int(task_index_N.max()) + 1 if task_index_N.numel() else 0
    _, std_K = segment_mean_std(rewards_N, task_index_N, num_tasks)
    return _scaled(_centered(rewards_N, group_index_N, num_groups), std_K[task_index_N], eps)


def compute_advantages(
    rewards_N: torch.Tensor,
    group_ids_N: torch.Tensor | Sequence[Hashable],
    mode: str = "grpo",
    eps: float = 1e-6,
    task_ids_N: torch.Tensor | Sequence[Hashable] | None = None,
) -> torch.Tensor:
    """One scalar advantage per rollout, ``adv_N`` (same float dtype as the rewards).

    ``group_ids_N`` says which prompt each rollout belongs to (any hashable ids or an integer tensor);
    ``task_ids_N`` (task type per rollout, e.g. "qa" / "numeric" / "mcq") is needed by ``task_std``.
    ``mode`` is a key of :data:`ADVANTAGE_ESTIMATORS`. A group of one always gets 0.
    """
    estimator = ADVANTAGE_ESTIMATORS.lookup(mode)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rewards_N = torch.as_tensor(rewards_N)
    if rewards_N.dim() != 1:
        raise ValueError(f"rewards_N must be 1-D, got shape {tuple(rewards_N.shape)}")
    if not rewards_N.is_floating_point():
        rewards_N = rewards_N.to(torch.get_default_dtype())
    check_finite(rewards_N)
    group_index_N, num_groups = index_ids(group_ids_N)
    if group_index_N.numel() != rewards_N.numel():
        raise ValueError(f"{group_index_N.numel()} group ids for {rewards_N.numel()} rewards")
    task_index_N = None
    if task_ids_N is not None:
        task_index_N, _ = index_ids(task_ids_N)
        if task_index_N.numel() != rewards_N.numel():
            raise ValueError(f"{task_index_N.numel()} task ids for {rewards_N.numel()} rewards")
        task_index_N = task_index_N.to(rewards_N.device)
    group_index_N = group_index_N.to(rewards_N.device)
    return estimator(rewards_N, group_index_N, num_groups, eps, task_index_N)
