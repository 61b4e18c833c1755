"""longrl.algo: the RL maths as pure tensor functions (no models, no config).

advantages  -- GRPO / Dr. GRPO / batch-std / task-std (QwenLong-L1.5 Eq. 7) group advantages
losses      -- clipped surrogate (clip-higher, dual clip, ratio cap) and exact token-level aggregation
kl          -- k1 / k2 / k3 KL estimators, entropy from logits
aepo        -- entropy-aware negative-gradient masking (QwenLong-L1.5 AEPO, Eq. 8-9)
shaping     -- DAPO overlong reward shaping
filtering   -- DAPO dynamic-sampling group filter and refill bookkeeping
"""

from longrl.algo.advantages import ADVANTAGE_ESTIMATORS, compute_advantages, register_advantage_estimator
from longrl.algo.aepo import ENTROPY_MASK_LEVELS, entropy_negative_mask
from longrl.algo.filtering import (
    FILTER_METRICS,
    ON_CAP_POLICIES,
    DynamicBatch,
    DynamicSamplingError,
    zero_variance_groups,
)
from longrl.algo.kl import KL_ESTIMATORS, entropy_from_logits, kl_estimate
from longrl.algo.losses import (
    LOSS_AGGREGATIONS,
    aggregate,
    clipped_surrogate,
    mask_counts,
    merge_micro_metrics,
    policy_loss,
)
from longrl.algo.shaping import overlong_penalty

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ENTROPY_MASK_LEVELS",
    "FILTER_METRICS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "ON_CAP_POLICIES",
    "DynamicBatch",
    "DynamicSamplingError",
    "aggregate",
    "clipped_surrogate",
    "compute_advantages",
    "entropy_from_logits",
    "entropy_negative_mask",
    "kl_estimate",
    "mask_counts",
    "merge_micro_metrics",
    "overlong_penalty",
    "policy_loss",
    "register_advantage_estimator",
    "zero_variance_groups",
]
