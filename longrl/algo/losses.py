"""Clipped policy-gradient loss (GRPO / DAPO family) with exact token-level aggregation.

Equations
---------
Per token, with ``r_t = pi_theta(o_t) / pi_old(o_t)`` and the sequence advantage ``A``:

* clipped surrogate, PPO (arXiv 1707.06347, Eq. 7) as used by GRPO (arXiv 2402.03300, Eq. 3) with
  DAPO's decoupled "clip-higher" bounds (arXiv 2503.14476, Sec. 3.1 "Clip-Higher"):
  ``loss_t = -min(r_t A, clip(r_t, 1 - clip_low, 1 + clip_high) A)``; GRPO is ``clip_low == clip_high``.
* dual clip for ``A < 0`` (Ye et al. 2020, arXiv 1912.09729, Sec. 3): ``loss_t = min(loss_t, -c A)``, which
  bounds the push-down on a token whose ratio has exploded.
* ratio cap (INTELLECT-2 two-sided clipping, TRL ``delta``): ``r_t`` in the unclipped term is replaced by
  ``min(r_t, ratio_cap)``. For ``A < 0`` this equals the dual clip with ``c = ratio_cap``; for ``A > 0``
  it only acts when ``ratio_cap < 1 + clip_high``.

* truncated importance sampling (off-policy correction for a rollout engine whose probabilities ``mu``
  differ from the trainer's ``pi_old``; Espeholt et al. 2018, arXiv 1802.01561, Eq. 1 truncation, as in
  verl's / TRL's TIS): ``loss_t <- min(pi_old(o_t) / mu(o_t), C) * loss_t`` (:func:`truncated_is_weights`),
  the weight a constant (no gradient).

Aggregation (``agg``), the trainer passing the WHOLE mini-batch's counts:

* ``token-mean`` -- DAPO token-level loss (Sec. 3.3, the ``1 / sum_i |o_i|`` of its objective) and
  the objective QwenLong-L1 trains with (arXiv 2505.17667, Sec. 2): ``sum_{i,t} loss_{i,t} / num_tokens``.
* ``seq-mean-token-mean`` -- the original GRPO ``1/G sum_i 1/|o_i| sum_t`` (arXiv 2402.03300, Eq. 3).
* ``seq-mean-token-sum`` -- ``1/num_seqs sum_i sum_t``.
* ``seq-mean-token-sum-norm`` -- Dr. GRPO (arXiv 2503.20783, Sec. 3.1): ``sum_{i,t} / (num_seqs * norm_const)``
  with ``norm_const`` the generation budget.

Exact accumulation: each micro-batch's returned loss is its share of the mini-batch loss, so summing the
micro-batch losses (or calling ``backward`` on each, with NO division by the number of micro-batches)
gives exactly the loss and gradient of the whole mini-batch in one piece. That holds because the
denominators (``num_tokens``, ``num_seqs``, ``norm_const``) are the mini-batch's, passed in
(:func:`mask_counts` summed over its micro-batches), not recounted per micro-batch.

Differences from verl / TRL
---------------------------
* verl's ``agg_loss`` falls back to the micro-batch's own counts when none are passed and its default
  Dr. GRPO constant is the padded width ``T`` of the micro-batch; TRL's ``grpo``/``bnpo`` losses divide by
  the number of accumulation steps (exact only for equal-sized micro-batches; its ``dapo`` loss does use
  the global token count, as we do). We default to the given
  tensor's counts only for single-batch use and reject counts smaller than the micro-batch's own.
* verl logs one ``pg_clipfrac`` that counts a token as clipped whenever the clipped term is larger,
  whatever the sign of ``A``; we log TRL's sign-aware low / high fractions (the bound that actually
  removed the gradient) plus the dual-clip and cap fractions.
* Masked positions never reach the arithmetic (``torch.where`` rather than multiply), so NaN / inf
  log-probs in padding cannot poison the loss or the gradient.
* Fully masked rows count as zero sequences in the default ``num_seqs`` (as verl).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from longrl.algo.kl import LOG_RATIO_CLAMP, kl_estimate
from longrl.algo.registry import Registry

_SUM_KEYS = ("loss/pg_loss", "loss/kl_loss", "loss/entropy_loss", "loss/total", "loss/active_tokens",
             "loss/active_seqs")


def mask_counts(mask_BT: torch.Tensor) -> tuple[int, int]:
    """``(active tokens, sequences with at least one active token)``; sum these over a mini-batch's
    micro-batches to get the ``num_tokens`` / ``num_seqs`` to pass to :func:`aggregate`."""
    active_BT = mask_BT.bool()
    return int(active_BT.sum()), int(active_BT.any(-1).sum())


def _denominator(given: int | float | torch.Tensor | None, own: torch.Tensor, name: str) -> torch.Tensor:
    if given is None:
        return own.clamp(min=1)
    if not isinstance(given, torch.Tensor) and given < float(own):
        raise ValueError(f"{name}={given} is smaller than this micro-batch's own count {int(own)}; "
                         f"pass the whole mini-batch's count")
    return torch.as_tensor(given, dtype=own.dtype, device=own.device).clamp(min=1)


LOSS_AGGREGATIONS: Registry[Callable[..., torch.Tensor]] = Registry("loss aggregation")
"""Name -> ``fn(masked_BT, len_B, num_tokens, num_seqs, norm_const)``; the names are the values of
``AlgoConfig.loss_agg``."""


def _seq_mean(seq_sum_B: torch.Tensor, len_B: torch.Tensor, num_seqs) -> torch.Tensor:
    return seq_sum_B.sum() / _denominator(num_seqs, (len_B > 0).sum().to(seq_sum_B.dtype), "num_seqs")


@LOSS_AGGREGATIONS.register("token-mean")
def _token_mean(masked_BT, len_B, num_tokens, num_seqs, norm_const):
    return masked_BT.sum() / _denominator(num_tokens, len_B.sum(), "num_tokens")


@LOSS_AGGREGATIONS.register("seq-mean-token-sum")
def _seq_mean_token_sum(masked_BT, len_B, num_tokens, num_seqs, norm_const):
    return _seq_mean(masked_BT.sum(-1), len_B, num_seqs)


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def _seq_mean_token_mean(masked_BT, len_B, num_tokens, num_seqs, norm_const):
    return _seq_mean(masked_BT.sum(-1) / len_B.clamp(min=1), len_B, num_seqs)


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(masked_BT, len_B, num_tokens, num_seqs, norm_const):
    const = float(masked_BT.shape[-1]) if norm_const is None else float(norm_const)
    if const <= 0:
        raise ValueError(f"norm_const must be > 0, got {norm_const}")
    return _seq_mean(masked_BT.sum(-1) / const, len_B, num_seqs)


def aggregate(
    values_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    agg: str = "token-mean",
    num_tokens: int | float | torch.Tensor | None = None,
    num_seqs: int | float | torch.Tensor | None = None,
    norm_const: float | None = None,
) -> torch.Tensor:
    """Reduce per-token values to this micro-batch's share of the mini-batch scalar.

    ``num_tokens`` / ``num_seqs`` are the mini-batch's active-token / non-empty-sequence counts
    (default: this tensor's own, i.e. the mini-batch is this tensor). ``norm_const`` is Dr. GRPO's
    constant for ``seq-mean-token-sum-norm`` (default ``T = values_BT.shape[-1]``, as verl; pass the
    generation budget so the value does not depend on padding).
    """
    reduce = LOSS_AGGREGATIONS.lookup(agg)
    if values_BT.shape != mask_BT.shape:
        raise ValueError(f"shape mismatch: values {tuple(values_BT.shape)} vs mask {tuple(mask_BT.shape)}")
    active_BT = mask_BT.bool()
    masked_BT = torch.where(active_BT, values_BT, 0.0)
    len_B = active_BT.sum(-1).to(values_BT.dtype)
    return reduce(masked_BT, len_B, num_tokens, num_seqs, norm_const)


def clipped_surrogate(
    ratio_BT: torch.Tensor,
    adv_BT: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,
    ratio_cap: float = 0.0,
) -> torch.Tensor:
    """Per-token loss ``-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)``, then the dual clip
    ``min(., -c A)`` where ``A < 0`` (``dual_clip = c > 1``) and ``r <- min(r, ratio_cap)`` in the
    unclipped term (``ratio_cap > 1``); 0 disables either. ``adv_BT`` broadcasts against ``ratio_BT``."""
    unclipped_BT = ratio_BT.clamp(max=ratio_cap) if ratio_cap > 0 else ratio_BT
    loss_BT = torch.maximum(-adv_BT * unclipped_BT, -adv_BT * ratio_BT.clamp(1 - clip_low, 1 + clip_high))
    if dual_clip > 0:
        loss_BT = torch.where(adv_BT < 0, torch.minimum(loss_BT, -adv_BT * dual_clip), loss_BT)
    return loss_BT


def truncated_is_weights(old_logps_BT: torch.Tensor, rollout_logps_BT: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token ``min(exp(log pi_old - log mu), cap)`` (detached; ``cap`` must be >= 1)."""
    if cap < 1:
        raise ValueError(f"tis cap must be >= 1, got {cap}")
    log_w_BT = (old_logps_BT.detach() - rollout_logps_BT.detach()).clamp(max=LOG_RATIO_CLAMP)
    return log_w_BT.exp().clamp(max=cap)


@torch.no_grad()
def rollout_gap_metrics(old_logps_BT: torch.Tensor, rollout_logps_BT: torch.Tensor, active_BT: torch.Tensor,
                        cap: float) -> dict[str, float]:
    """``rollout/logprob_abs_diff`` (mean |log pi_old - log mu| per active token) and
    ``rollout/tis_clipped_frac`` (share of active tokens with pi_old / mu > ``cap``; 0 when ``cap`` is 0)."""
    diff_BT = old_logps_BT - rollout_logps_BT
    clipped_BT = diff_BT > torch.log(torch.tensor(float(cap))) if cap > 0 else torch.zeros_like(active_BT)
    return {"rollout/logprob_abs_diff": _masked_mean(diff_BT.abs(), active_BT),
            "rollout/tis_clipped_frac": _masked_mean(clipped_BT.float(), active_BT)}


def _check_clip_args(clip_low: float, clip_high: float, dual_clip: float, ratio_cap: float) -> None:
    if not 0 <= clip_low < 1:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    if clip_high < 0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    if dual_clip != 0 and dual_clip <= 1:
        raise ValueError(f"dual_clip must be 0 (off) or > 1, got {dual_clip}")
    if ratio_cap != 0 and ratio_cap <= 1:
        raise ValueError(f"ratio_cap must be 0 (off) or > 1, got {ratio_cap}")


def _masked_mean(values_BT: torch.Tensor, active_BT: torch.Tensor) -> float:
    n = int(active_BT.sum())
    return float(torch.where(active_BT, values_BT, 0.0).sum()) / n if n else 0.0


@torch.no_grad()
def _ratio_metrics(ratio_BT, log_ratio_BT, adv_BT, active_BT, clip_low, clip_high, dual_clip, ratio_cap):
    adv_BT = adv_BT.expand_as(ratio_BT)
    low_BT = (adv_BT < 0) & (ratio_BT < 1 - clip_low)
    high_BT = (adv_BT > 0) & (ratio_BT > 1 + clip_high)
    any_active = bool(active_BT.any())
    metrics = {
        "loss/clip_frac_low": _masked_mean(low_BT.float(), active_BT),
        "loss/clip_frac_high": _masked_mean(high_BT.float(), active_BT),
        "loss/clip_frac": _masked_mean((low_BT | high_BT).float(), active_BT),
        "loss/approx_kl": _masked_mean(ratio_BT - 1 - log_ratio_BT, active_BT),
        "loss/ppo_kl": _masked_mean(-log_ratio_BT, active_BT),
        "loss/ratio_mean": _masked_mean(ratio_BT, active_BT),
        "loss/ratio_max": float(ratio_BT[active_BT].max()) if any_active else 1.0,
        "loss/ratio_min": float(ratio_BT[active_BT].min()) if any_active else 1.0,
    }
    if dual_clip > 0:
        unclipped_BT = ratio_BT.clamp(max=ratio_cap) if ratio_cap > 0 else ratio_BT
        metrics["loss/dual_clip_frac"] = _masked_mean(((adv_BT < 0) & (unclipped_BT > dual_clip)).float(),
                                                      active_BT)
    if ratio_cap > 0:
        metrics["loss/ratio_cap_frac"] = _masked_mean((ratio_BT > ratio_cap).float(), active_BT)
    return metrics


def policy_loss(
    logps_BT: torch.Tensor,
    old_logps_BT: torch.Tensor,
    adv_B: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,
    ratio_cap: float = 0.0,
    agg: str = "token-mean",
    num_tokens: int | float | torch.Tensor | None = None,
    num_seqs: int | float | torch.Tensor | None = None,
    norm_const: float | None = None,
    ref_logps_BT: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy_BT: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    rollout_logps_BT: torch.Tensor | None = None,
    tis_cap: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate (+ optional ``kl_coef * KL`` and ``- entropy_coef * entropy``), aggregated.

    ``adv_B`` is one advantage per sequence (``[B]``) or per token (``[B, T]``); ``mask_BT`` marks the
    response tokens that count (apply an AEPO mask to it before counting ``num_tokens``). All three
    terms share ``agg`` and the mini-batch counts. Returns ``(loss, metrics)``: ``loss`` is this
    micro-batch's share (see the module docstring), ``metrics`` holds floats -- the ``loss/*_loss`` and
    ``loss/total`` shares and ``loss/active_tokens`` (sum them over micro-batches) and token means over
    this micro-batch's active tokens (weight them by ``loss/active_tokens``; :func:`merge_micro_metrics`).

    ``rollout_logps_BT`` are the rollout engine's log-probs of the sampled tokens (log mu): with them the
    ``rollout/*`` gap metrics are returned, and with ``tis_cap >= 1`` the per-token policy loss is
    multiplied by :func:`truncated_is_weights` ``(old_logps_BT, rollout_logps_BT, tis_cap)``.
    """
    _check_clip_args(clip_low, clip_high, dual_clip, ratio_cap)
    if logps_BT.shape != old_logps_BT.shape or logps_BT.shape != mask_BT.shape:
        raise ValueError(f"shape mismatch: logps {tuple(logps_BT.shape)}, old {tuple(old_logps_BT.shape)}, "
                         f"mask {tuple(mask_BT.shape)}")
    active_BT = mask_BT.bool()
    adv_BT = adv_B.detach().to(logps_BT.dtype)
    adv_BT = adv_BT[:, None] if adv_BT.dim() == 1 else adv_BT
    log_ratio_BT = torch.where(active_BT, logps_BT - old_logps_BT.detach(), 0.0)
    log_ratio_BT = log_ratio_BT.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio_BT = log_ratio_BT.exp()
    counts = dict(num_tokens=num_tokens, num_seqs=num_seqs, norm_const=norm_const)
    pg_BT = clipped_surrogate(ratio_BT, adv_BT, clip_low, clip_high, dual_clip, ratio_cap)
    if tis_cap and rollout_logps_BT is None:
        raise ValueError("tis_cap > 0 needs rollout_logps_BT")
    if tis_cap:
        pg_BT = pg_BT * truncated_is_weights(old_logps_BT, rollout_logps_BT, tis_cap)
    pg_loss = aggregate(pg_BT, mask_BT, agg, **counts)
    loss = pg_loss
    metrics = _ratio_metrics(ratio_BT, log_ratio_BT, adv_BT, active_BT, clip_low, clip_high, dual_clip, ratio_cap)
    if rollout_logps_BT is not None:
        metrics.update(rollout_gap_metrics(old_logps_BT, rollout_logps_BT, active_BT, tis_cap))
    metrics["loss/pg_loss"] = float(pg_loss.detach())
    if kl_coef:
        if ref_logps_BT is None:
            raise ValueError("kl_coef > 0 needs ref_logps_BT")
        kl_BT = kl_estimate(logps_BT, ref_logps_BT.detach(), kl_estimator)
        kl_loss = kl_coef * aggregate(kl_BT, mask_BT, agg, **counts)
        loss = loss + kl_loss
        metrics["loss/kl"] = _masked_mean(kl_BT.detach(), active_BT)
        metrics["loss/kl_loss"] = float(kl_loss.detach())
    if entropy_BT is not None:
        metrics["actor/entropy"] = _masked_mean(entropy_BT.detach(), active_BT)
    if entropy_coef:
        if entropy_BT is None:
            raise ValueError("entropy_coef != 0 needs entropy_BT")
        entropy_loss = -entropy_coef * aggregate(entropy_BT, mask_BT, agg, **counts)
        loss = loss + entropy_loss
        metrics["loss/entropy_loss"] = float(entropy_loss.detach())
    metrics["loss/total"] = float(loss.detach())
    metrics["loss/active_tokens"], metrics["loss/active_seqs"] = map(float, mask_counts(mask_BT))
    return loss, metrics


def merge_micro_metrics(metrics_list: list[dict[str, float]]) -> dict[str, float]:
    """Combine :func:`policy_loss` metrics of a mini-batch's micro-batches: loss shares and counts are
    summed, ``loss/ratio_max`` / ``loss/ratio_min`` take the max / min, every other key is a token mean
    weighted by ``loss/active_tokens`` (equal to computing it on the whole mini-batch at once)."""
    tokens = [m["loss/active_tokens"] for m in metrics_list]
    total_tokens = sum(tokens)
    merged: dict[str, float] = {}
    for key in dict.fromkeys(k for m in metrics_list for k in m):
        pairs = [(m[key], n) for m, n in zip(metrics_list, tokens) if key in m]
        if key in _SUM_KEYS:
            merged[key] = sum(v for v, _ in pairs)
        elif key == "loss/ratio_max":
            merged[key] = max(v for v, n in pairs if n > 0) if total_tokens else 1.0
        elif key == "loss/ratio_min":
            merged[key] = min(v for v, n in pairs if n > 0) if total_tokens else 1.0
        else:
            merged[key] = sum(v * n for v, n in pairs) / total_tokens if total_tokens else 0.0
    return merged
