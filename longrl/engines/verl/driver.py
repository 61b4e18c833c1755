"""What longrl's verl trainer keeps in verl's driver process (pure: torch and longrl only, no verl import).

verl 0.9.1 calls a registered advantage estimator with the token rewards, the response mask, the group
``index`` (a fresh ``uuid4`` per prompt) and ``algorithm`` config only, and a registered policy loss with
log-probs and advantages only: neither the task of a rollout (task-level std, QwenLong-L1.5 Eq. 7) nor
its old-policy entropies (AEPO) reach them. Both are in verl's driver process, though: the trainer
draws each prompt there (``PPOTrainer._fetch_one_gen_batch``: the parquet row with ``extra_info.task``
and ``data_source``, and the uid it gives the prompt), computes the old-policy per-token entropies there
(``_compute_old_log_prob`` writes ``entropy`` to its TransferQueue) and calls the estimator there
(``_compute_advantage``). longrl's trainer (``longrl.engines.verl.trainer``, verl's
``trainer.v1.trainer_mode=longrl``) uses this module at those three points:

* :class:`TaskBook` -- ``uid -> task`` recorded when a prompt is drawn, read by the ``longrl_task_std``
  estimator (same process); a uid it never saw is an error naming the trainer mode to use.
* :class:`AEPOControl` -- longrl's AEPO (``longrl.algo.aepo``) on the step's padded tensors: the batch
  rule with its hysteresis state (checkpointed) or the token / sequence variants; it returns the new
  response mask, which the trainer writes back as verl's ``response_mask`` and ``loss_mask`` so the
  dropped tokens leave the surrogate, the KL and entropy terms and the token-mean denominator, as in
  the own trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from longrl.algo import aepo
from longrl.data.records import TASK_TYPES, task_for_source

KEEP_STEPS = 2
"""A drawn prompt's task is kept while ``global_step - step_drawn <= KEEP_STEPS`` (verl's sync trainer
trains a prompt in the step that drew it; groups that dynamic sampling discards are never looked up)."""


def row_task(data_source: Any, extra_info: Any) -> str:
    """The task of a verl row as longrl writes it: ``extra_info.task``, else derived from ``data_source``
    (the same rule as the reward function)."""
    info = extra_info if isinstance(extra_info, dict) else {}
    task = info.get("task")
    return task if task in TASK_TYPES else task_for_source(str(data_source or ""))


class TaskBook:
    """``uid -> task`` for the prompts verl's driver has drawn (see the module docstring)."""

    def __init__(self) -> None:
        self._task: dict[str, tuple[str, int]] = {}

    def record(self, uids: Iterable[Any], data_sources: Iterable[Any], extra_infos: Iterable[Any],
               step: int) -> None:
        """Record the drawn prompts of ``step`` and forget those older than :data:`KEEP_STEPS`."""
        for uid, source, info in zip(uids, data_sources, extra_infos, strict=True):
            self._task[str(uid)] = (row_task(source, info), step)
        stale = [u for u, (_, s) in self._task.items() if step - s > KEEP_STEPS]
        for u in stale:
            del self._task[u]

    def tasks(self, uids: Sequence[Any]) -> list[str]:
        """The task of every uid; a uid never recorded raises ``LookupError`` naming the remedy."""
        missing = [str(u) for u in uids if str(u) not in self._task]
        if missing:
            raise LookupError(
                f"longrl_task_std: no task recorded for {len(missing)} of {len(uids)} rollouts "
                f"(uids {sorted(set(missing))[:3]}): verl passes an advantage estimator the group uid but not "
                f"the row's task or data_source, so longrl's verl trainer records the task of each prompt "
                f"when it draws it; run the job with trainer.v1.trainer_mode=longrl (the longrl pipeline "
                f"sets it with algo.advantage=task_std)")
        return [self._task[str(u)][0] for u in uids]

    def __len__(self) -> int:
        return len(self._task)

    def clear(self) -> None:
        self._task.clear()


TASKS = TaskBook()
"""The driver process's book: filled by longrl's trainer, read by the ``longrl_task_std`` estimator."""


def row_advantages(adv_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """The scalar advantage of each row (outcome estimators broadcast one value over the response):
    the value at the row's first active token, 0 for a row without one."""
    active_BT = mask_BT.bool()
    first_B = active_BT.to(torch.int8).argmax(dim=-1)
    adv_B = adv_BT.gather(-1, first_B[:, None])[:, 0]
    return torch.where(active_BT.any(-1), adv_B, torch.zeros_like(adv_B))


class AEPOControl:
    """longrl's AEPO on one verl step: ``level="batch"`` (the published rule: the hysteresis band
    ``low``/``high``, state in :attr:`state`) or ``"token"`` / ``"sequence"`` (``threshold``)."""

    def __init__(self, level: str, threshold: float = 0.0, low: float = 0.0, high: float = 0.0,
                 active: bool = False):
        if level not in aepo.ENTROPY_MASK_LEVELS:
            raise ValueError(f"AEPO level must be one of {list(aepo.ENTROPY_MASK_LEVELS)}, got {level!r}")
        if level == "batch":
            if high <= 0:
                raise ValueError(f"AEPO batch level needs high > 0, got {high}")
        elif threshold <= 0:
            raise ValueError(f"AEPO {level} level needs threshold > 0, got {threshold}")
        self.level, self.threshold = level, threshold
        self.state = aepo.AEPOState(low, high, active) if level == "batch" else None

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> AEPOControl | None:
        """From the verl config's ``longrl.aepo`` section (None or ``level: null`` = AEPO off)."""
        if not settings or not settings.get("level"):
            return None
        return cls(str(settings["level"]), float(settings.get("threshold", 0.0)),
                   float(settings.get("low", 0.0)), float(settings.get("high", 0.0)))

    @torch.no_grad()
    def apply(self, adv_BT: torch.Tensor, entropy_BT: torch.Tensor,
              mask_BT: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(the step's response mask with AEPO's drops, ``aepo/*`` metrics). ``entropy_BT`` is the
        old-policy entropy per response token; rows with an empty mask (verl's padding rows) take no part."""
        adv_B = row_advantages(adv_BT, mask_BT)
        active_BT = mask_BT.bool()
        rows_B = active_BT.any(-1)
        if self.state is None:
            new_BT = aepo.entropy_negative_mask(adv_B, entropy_BT, mask_BT, self.threshold, self.level)
            kept = int(new_BT.bool().sum())
            return new_BT, {"aepo/masked_token_frac": 1.0 - kept / max(int(active_BT.sum()), 1)}
        n = int(active_BT.sum())
        entropy = aepo.batch_mean_entropy(float(torch.where(active_BT, entropy_BT.float(), 0.0).sum()), n)
        dropped = 0.0
        if self.state.update(entropy):
            mask_BT, _ = aepo.drop_negative_samples(adv_B, mask_BT)
            dropped = float((adv_B < 0)[rows_B].float().mean()) if bool(rows_B.any()) else 0.0
        return mask_BT, {"aepo/active": float(self.state.active), "aepo/dropped_frac": dropped,
                         "aepo/entropy": entropy}

    def state_dict(self) -> dict[str, bool]:
        return self.state.state_dict() if self.state is not None else {}

    def load_state_dict(self, state: dict[str, bool]) -> None:
        if self.state is not None and state:
            self.state.load_state_dict(state)
