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

``token`` and ``sequence`` are finer-grained variants of the paper's batch-level rule, not the paper's
exact algorithm.

The published rule (``AlgoConfig.entropy_mask_level = "batch"`` with ``entropy_low`` / ``entropy_high``)
adds a hysteresis band, a state the authors confirmed in Tongyi-Zhiwen/Qwen-Doc issue #16: while the
batch's mean token entropy is above ``high``, every negative-advantage sample is dropped from the update;
dropping continues until the entropy falls below ``low``; then all samples train again. Inside the band
the previous state holds. :class:`AEPOState` keeps that state (``state_dict`` / ``load_state_dict``, saved
in the RL checkpoint), :func:`hysteresis_active` is the transition and :func:`drop_negative_samples` the
mask while active. The trainer measures the entropy with the old policy over every response token of the
step's batch, before the first update.

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


def hysteresis_active(active: bool, entropy: float, low: float, high: float) -> bool:
    """The AEPO state after seeing ``entropy``: on above ``high``, off below ``low``, unchanged in between."""
    if entropy > high:
        return True
    if entropy < low:
        return False
    return active


def batch_mean_entropy(entropy_sum: float, n_tokens: int) -> float:
    """Mean token entropy of a batch from its sum over active tokens and their count (0 for no tokens)."""
    return entropy_sum / n_tokens if n_tokens > 0 else 0.0


def drop_negative_samples(adv_B: torch.Tensor, mask_BT: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mask without the negative-advantage rows, fraction of rows dropped); the input is not modified."""
    negative_B = adv_B.detach().reshape(-1) < 0
    keep_BT = (~negative_B)[:, None].expand_as(mask_BT)
    out = mask_BT & keep_BT if mask_BT.dtype == torch.bool else mask_BT * keep_BT.to(mask_BT.dtype)
    return out, float(negative_B.float().mean()) if negative_B.numel() else 0.0


class AEPOState:
    """The batch-level AEPO switch with its hysteresis band; see the module docstring."""

    def __init__(self, low: float, high: float, active: bool = False):
        if not 0 <= low <= high:
            raise ValueError(f"AEPO band needs 0 <= low <= high, got low={low}, high={high}")
        self.low, self.high, self.active = low, high, active

    def update(self, entropy: float) -> bool:
        """Move the state with this step's batch entropy; returns whether negatives are dropped now."""
        self.active = hysteresis_active(self.active, entropy, self.low, self.high)
        return self.active

    def state_dict(self) -> dict[str, bool]:
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, bool]) -> None:
        self.active = bool(state["active"])
