"""Per-token KL estimators against a reference policy, and entropy from logits.

Equations
---------
With ``log r = log pi_ref(o_t) - log pi_theta(o_t)`` for tokens sampled from pi_theta (Schulman,
"Approximating KL divergence", 2020):

* ``k1``: ``-log r``                   (unbiased, high variance, can be negative)
* ``k2``: ``0.5 * (log r)^2``          (biased, low variance, always >= 0)
* ``k3``: ``r - log r - 1``            (unbiased, low variance, >= 0; verl "low_var_kl")

k3 is the per-token KL term of the GRPO objective (DeepSeekMath, arXiv 2402.03300, Eq. 4), which
QwenLong-L1's GRPO formulation (arXiv 2505.17667, Sec. 2) keeps with coefficient beta; DAPO (arXiv 2503.14476, Sec. 2.3)
and the QwenLong-L1 runs drop it (``AlgoConfig.kl_coef = 0``).

Entropy: ``H(p) = logsumexp(z) - sum_v softmax(z)_v z_v`` for logits ``z`` (verl ``entropy_from_logits``).

Differences from verl / TRL
---------------------------
* k3 uses verl's clamps: ``log r`` to [-20, 20] before ``exp`` and the estimate to [-10, 10]; TRL
  applies neither. k1 and k2 are unclamped, as in both.
* No straight-through "k3+" variant: the estimator kind is the only knob.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from longrl.algo.registry import Registry

LOG_RATIO_CLAMP = 20.0
"""|log r| bound before exponentiating in k3 (verl)."""
K3_CLAMP = 10.0
"""|k3| bound on the per-token estimate (verl)."""


KL_ESTIMATORS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("KL estimator")
"""Name -> per-token estimator; the names are the values of ``AlgoConfig.kl_estimator``."""


@KL_ESTIMATORS.register("k1")
def _k1(logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor) -> torch.Tensor:
    return logps_BT - ref_logps_BT


@KL_ESTIMATORS.register("k2")
def _k2(logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logps_BT - ref_logps_BT).square()


@KL_ESTIMATORS.register("k3")
def _k3(logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor) -> torch.Tensor:
    log_r_BT = (ref_logps_BT - logps_BT).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (log_r_BT.exp() - log_r_BT - 1).clamp(-K3_CLAMP, K3_CLAMP)


def kl_estimate(logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref), shape of ``logps_BT``; differentiable in ``logps_BT``.

    Masking and aggregation are the caller's (see :func:`longrl.algo.losses.aggregate`).
    """
    estimator = KL_ESTIMATORS.lookup(kind)
    if logps_BT.shape != ref_logps_BT.shape:
        raise ValueError(f"shape mismatch: logps {tuple(logps_BT.shape)} vs ref {tuple(ref_logps_BT.shape)}")
    return estimator(logps_BT, ref_logps_BT)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Categorical entropy over the last dimension: ``[..., V] -> [...]`` (in nats).

    Computed as ``logsumexp(z) - sum softmax(z) * z``, stable for large logits. Divide the logits by
    the sampling temperature first when the entropy of the sampling distribution is wanted.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
