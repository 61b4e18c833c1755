"""Entropy-aware negative-gradient masking (QwenLong-L1.5 AEPO).

Equations and our reading
-------------------------
QwenLong-L1.5 (arXiv 2512.12967, Sec. on Adaptive Entropy-Controlled Policy Optimization, Eq. 8-9)
observes that negative-advantage samples raise policy entropy and positive ones lower it. Our reading
of Eq. 8-9 (we could not consult the typeset equations; this follows the paper's description and the
authors' released code in Tongyi-Zhiwen/Qwen-Doc, QwenLong-L1.5/README.md): Eq. 8 multiplies each
sample's term of the token-level objective by an indicator, and Eq. 9 sets that indicator to 0 for
``A_i < 0`` while the batch entropy ``H(pi_theta, B)`` is above an upper bound, 1 otherwise, so entropy is
steered back into a band. The released snippet works at batch level: when the batch entropy is inside
its control band, every non-positive-advantage sample is removed from the update. This module provides the indicator as a mask at three granularities, all "off" when
``threshold <= 0``:

* ``token``:    drop token t of sample i when ``A_i < 0`` and ``H_{i,t} > threshold``;
* ``sequence``: drop every token of sample i when ``A_i < 0`` and the mean entropy of its active tokens
  exceeds ``threshold``;
* ``batch``:    drop every negative-advantage sample when the mean entropy of all active tokens (or the
  ``batch_entropy`` passed in, e.g. the mini-batch value when working on one micro-batch) exceeds
  ``threshold`` -- the paper's form with a single upper bound.

``token`` and ``sequence`` (the values of ``AlgoConfig.entropy_mask_level``) are finer-grained
variants of the paper's batch-level rule, not the paper's exact algorithm. The hysteresis band of the
released code (a lower bound below which negatives are re-enabled) is the caller's state, not here.

Interaction with token-mean
---------------------------
The mask is returned, not applied: the caller multiplies it into ``mask_BT`` before counting the
mini-batch's active tokens, so the token-mean denominator excludes dropped tokens (as the released code,
which removes the samples from the batch). Computing the mask from old-policy entropies keeps that count
known before the first micro-batch.
"""

from __future__ import annotations

import torch

ENTROPY_MASK_LEVELS = ("token", "sequence", "batch")


def entropy_negative_mask(
    adv_B: torch.Tensor,
    entropy_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    threshold: float,
    level: str = "token",
    batch_entropy: float | None = None,
) -> torch.Tensor:
    """Return ``mask_BT`` with high-entropy negative-advantage tokens removed (same dtype as ``mask_BT``).

    ``threshold <= 0`` turns masking off and returns ``mask_BT`` unchanged. Entropies are read without
    gradient. ``batch_entropy`` is only used at ``level="batch"``.
    """
    if level not in ENTROPY_MASK_LEVELS:
        raise ValueError(f"unknown entropy mask level '{level}'; choose from {list(ENTROPY_MASK_LEVELS)}")
    if entropy_BT.shape != mask_BT.shape:
        raise ValueError(f"shape mismatch: entropy {tuple(entropy_BT.shape)} vs mask {tuple(mask_BT.shape)}")
    if threshold <= 0:
        return mask_BT
    active_BT = mask_BT.bool()
    entropy_BT = entropy_BT.detach()
    negative_B = adv_B.detach().reshape(-1) < 0
    if level == "token":
        drop_BT = negative_B[:, None] & (entropy_BT > threshold)
    elif level == "sequence":
        n_B = active_BT.sum(-1)
        mean_B = torch.where(active_BT, entropy_BT, 0.0).sum(-1) / n_B.clamp(min=1)
        drop_BT = (negative_B & (n_B > 0) & (mean_B > threshold))[:, None].expand_as(active_BT)
    else:
        if batch_entropy is None:
            n = active_BT.sum().clamp(min=1)
            batch_entropy = float(torch.where(active_BT, entropy_BT, 0.0).sum() / n)
        drop_BT = (negative_B & (batch_entropy > threshold))[:, None].expand_as(active_BT)
    if mask_BT.dtype == torch.bool:
        return mask_BT & ~drop_BT
    return mask_BT * (~drop_BT).to(mask_BT.dtype)
