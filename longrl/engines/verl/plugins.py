"""longrl's advantage estimators, policy losses and trainer registered in verl (imported in every verl
process through longrl's ``verl.plugins`` entry point, and in verl's workers through
``actor_rollout_ref.model.external_lib=longrl.engines.verl.plugins``; needs verl installed).

Estimators (``algorithm.adv_estimator``): ``longrl_grpo``, ``longrl_drgrpo``, ``longrl_batch_std``,
``longrl_task_std`` -- :func:`longrl.algo.compute_advantages` on the outcome reward (the sum of verl's
token-level rewards) grouped by verl's ``index`` (the prompt uid), broadcast over the response mask.
They differ from verl's built-in ``grpo`` where longrl differs (a group of one gets 0, NaN rewards
raise). Rows with an empty response mask -- the synthetic rows verl appends to make the batch divisible
by the data-parallel size (``padding_utils.upsample_batch_to_divisible_size``) -- get 0 and take no part
in any statistic (they would otherwise enter ``batch_std``'s and ``task_std``'s stds).

``longrl_task_std`` (QwenLong-L1.5 task-level std) needs each rollout's task, and verl calls an estimator
with ``token_level_rewards``, ``response_mask``, ``index`` (a fresh ``uuid4`` per prompt) and ``config``
only. The workaround: longrl's verl trainer (``trainer.v1.trainer_mode=longrl``,
:mod:`longrl.engines.verl.trainer`, registered below) records ``uid -> task`` in
:data:`longrl.engines.verl.driver.TASKS` when it draws each prompt, in the driver process where verl
also runs the estimator; the estimator looks the uids up there, and a uid never recorded (another
trainer mode) is an error saying so. AEPO is applied by the same trainer (see there).

Policy losses (``actor.policy_loss.loss_mode``): ``longrl`` (clip-higher surrogate, no dual clip) and
``longrl_dual_clip`` (dual clip at ``actor.clip_ratio_c``): :func:`longrl.algo.clipped_surrogate`
aggregated by :func:`longrl.algo.aggregate` with verl's global mini-batch counts, so the micro-batch
shares sum to the mini-batch loss exactly as in verl's ``agg_loss``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from verl.trainer.ppo import core_algos

from longrl.algo import aggregate, clipped_surrogate, compute_advantages
from longrl.algo.losses import LOG_RATIO_CLAMP
from longrl.engines.verl.driver import TASKS

ESTIMATORS = {"longrl_grpo": "grpo", "longrl_drgrpo": "drgrpo", "longrl_batch_std": "batch_std",
              "longrl_task_std": "task_std"}
EPS = 1e-6
logger = logging.getLogger(__name__)


def outcome_advantages(mode: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                       index: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both ``[B, T]``: longrl's per-rollout advantage times the response mask
    (0 for rows with an empty mask, which take no part; ``task_std`` reads the tasks from ``TASKS``)."""
    scores_N = token_level_rewards.sum(dim=-1)
    real_N = response_mask.bool().any(dim=-1)
    rows = real_N.nonzero().flatten().tolist()
    uids = [index[i] for i in rows]
    adv_N = torch.zeros_like(scores_N)
    if rows:
        tasks = TASKS.tasks(uids) if mode == "task_std" else None
        adv_N[real_N] = compute_advantages(scores_N[real_N], uids, mode=mode, eps=EPS, task_ids_N=tasks)
    adv_BT = adv_N[:, None] * response_mask
    return adv_BT, adv_BT


def _make_estimator(mode: str):
    def estimator(token_level_rewards, response_mask, index=None, config=None, **_):
        if index is None:
            raise ValueError(f"longrl_{mode} needs verl's group index (uid)")
        return outcome_advantages(mode, token_level_rewards, response_mask, index)

    estimator.__name__ = f"longrl_{mode}_advantage"
    return estimator


def _global_counts(config, dp_size: int) -> dict[str, float | None]:
    """verl's global batch info -> longrl's per-rank ``num_tokens`` / ``num_seqs`` / ``norm_const``."""
    info = dict(getattr(config, "global_batch_info", None) or {})
    dp = info.get("dp_size") or dp_size or 1
    tokens, seqs = info.get("batch_num_tokens"), info.get("global_batch_size")
    return {"num_tokens": None if tokens is None else float(tokens) / dp,
            "num_seqs": None if seqs is None else float(seqs) / dp,
            "norm_const": info.get("loss_scale_factor")}


def longrl_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                       config=None, rollout_is_weights=None, dual_clip: bool = False):
    """longrl's clipped surrogate under verl's policy-loss signature."""
    if rollout_is_weights is not None:
        raise ValueError("longrl's policy loss does not take rollout correction weights "
                         "(leave algorithm.rollout_correction off)")
    clip_low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
    clip_high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
    c = float(config.get("clip_ratio_c", 3.0)) if dual_clip else 0.0
    active = response_mask.bool()
    log_ratio = torch.where(active, log_prob - old_log_prob.detach(), 0.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    loss_BT = clipped_surrogate(ratio, advantages.detach(), clip_low, clip_high, dual_clip=c)
    loss = aggregate(loss_BT, response_mask, loss_agg_mode, **_global_counts(config, 1))
    with torch.no_grad():
        n = active.sum().clamp(min=1)
        clipped = torch.gt(-advantages * ratio.clamp(1 - clip_low, 1 + clip_high), -advantages * ratio)
        metrics = {"actor/pg_clipfrac": float((clipped & active).sum() / n),
                   "actor/ppo_kl": float(torch.where(active, -log_ratio, 0.0).sum() / n)}
    return loss, metrics


def register() -> None:
    """Register the estimators and losses (idempotent: verl's registry accepts the same function twice)."""
    for name, mode in ESTIMATORS.items():
        if name not in core_algos.ADV_ESTIMATOR_REGISTRY:
            core_algos.register_adv_est(name)(_make_estimator(mode))
    core_algos.register_policy_loss("longrl")(longrl_policy_loss)
    core_algos.register_policy_loss("longrl_dual_clip")(
        lambda *args, **kw: longrl_policy_loss(*args, dual_clip=True, **kw))


def register_trainer() -> bool:
    """Register longrl's verl trainer (``trainer.v1.trainer_mode=longrl``); False, with a warning, where
    verl's V1 trainer cannot be imported (verl then reports the unknown trainer mode by name)."""
    try:
        import longrl.engines.verl.trainer  # noqa: F401  (registers on import)
    except Exception as e:  # noqa: BLE001 -- verl swallows plug-in import errors; keep the estimators and say why
        logger.warning("longrl's verl trainer (trainer.v1.trainer_mode=longrl) is not registered: %s", e)
        return False
    return True


register()
register_trainer()
