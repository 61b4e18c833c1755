import math

import pytest
import torch

from longrl.algo import (
    LOSS_AGGREGATIONS,
    aggregate,
    clipped_surrogate,
    mask_counts,
    merge_micro_metrics,
    policy_loss,
)

DAPO = dict(clip_low=0.2, clip_high=0.28)


def _loss(ratios, adv, mask=None, **kw):
    logps = torch.log(torch.tensor([ratios], dtype=torch.float64))
    mask = torch.ones_like(logps) if mask is None else torch.tensor([mask], dtype=torch.float64)
    return policy_loss(logps, torch.zeros_like(logps), torch.tensor([adv], dtype=torch.float64), mask,
                       **{**DAPO, **kw})


def test_clip_higher_positive_advantage_hand_computed():
    # A = +1: per token -min(r, clip(r, 0.8, 1.28)): r=1.5 -> -1.28 ; r=0.5 -> -0.5 ; r=1.1 -> -1.1
    # token-mean = -(1.28 + 0.5 + 1.1) / 3 = -0.96
    loss, m = _loss([1.5, 0.5, 1.1], 1.0)
    assert loss.item() == pytest.approx(-0.96)
    assert m["loss/clip_frac_high"] == pytest.approx(1 / 3)  # only r = 1.5 lost its gradient
    assert m["loss/clip_frac_low"] == 0.0                     # r = 0.5 with A > 0 is not clipped
    assert m["loss/ratio_mean"] == pytest.approx(3.1 / 3)
    assert m["loss/ratio_max"] == pytest.approx(1.5) and m["loss/ratio_min"] == pytest.approx(0.5)


def test_negative_advantage_and_dual_clip_hand_computed():
    # A = -1: per token max(r, clip(r, 0.8, 1.28)): r=3 -> 3 ; r=0.5 -> 0.8 ; r=1.1 -> 1.1 ; mean 4.9/3
    loss, m = _loss([3.0, 0.5, 1.1], -1.0)
    assert loss.item() == pytest.approx(4.9 / 3)
    assert m["loss/clip_frac_low"] == pytest.approx(1 / 3)
    # dual clip c = 2: min(3, 2) = 2 -> (2 + 0.8 + 1.1) / 3 = 1.3
    loss, m = _loss([3.0, 0.5, 1.1], -1.0, dual_clip=2.0)
    assert loss.item() == pytest.approx(1.3)
    assert m["loss/dual_clip_frac"] == pytest.approx(1 / 3)
    # ratio cap 2 gives the same loss for A < 0
    loss_cap, m = _loss([3.0, 0.5, 1.1], -1.0, ratio_cap=2.0)
    assert loss_cap.item() == pytest.approx(1.3)
    assert m["loss/ratio_cap_frac"] == pytest.approx(1 / 3)


def test_ratio_cap_below_clip_high_binds_positive_side():
    # A = +1, r = 1.25, cap 1.1 < 1 + 0.28: -min(min(1.25, 1.1), 1.25) = -1.1
    loss, _ = _loss([1.25], 1.0, ratio_cap=1.1)
    assert loss.item() == pytest.approx(-1.1)


def test_grpo_is_dapo_with_equal_clips():
    # clip 0.2 both sides, A = +1: r = 1.25 -> -1.2
    loss, _ = _loss([1.25], 1.0, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(-1.2)


def test_aggregation_modes_hand_computed():
    # rows [1, 2, 3] (3 active) and [4, x, x] (1 active), plus a fully masked row
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 7.0], [9.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert aggregate(v, m, "token-mean").item() == pytest.approx(10 / 4)            # (6 + 4) / 4 tokens
    assert aggregate(v, m, "seq-mean-token-sum").item() == pytest.approx(5.0)       # (6 + 4) / 2 seqs
    assert aggregate(v, m, "seq-mean-token-mean").item() == pytest.approx(3.0)      # (6/3 + 4/1) / 2
    assert aggregate(v, m, "seq-mean-token-sum-norm").item() == pytest.approx(10 / 6)  # (6 + 4) / (2 * 3)
    assert aggregate(v, m, "seq-mean-token-sum-norm", norm_const=10).item() == pytest.approx(0.5)
    assert aggregate(v, m, "token-mean", num_tokens=8).item() == pytest.approx(10 / 8)
    assert mask_counts(m) == (4, 2)


def test_aggregate_errors():
    v, m = torch.ones(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(v, m, "sum")
    with pytest.raises(ValueError, match="whole mini-batch"):
        aggregate(v, m, "token-mean", num_tokens=5)
    with pytest.raises(ValueError, match="whole mini-batch"):
        aggregate(v, m, "seq-mean-token-mean", num_seqs=1)


def test_argument_validation():
    with pytest.raises(ValueError, match="dual_clip"):
        _loss([1.0], 1.0, dual_clip=0.5)
    with pytest.raises(ValueError, match="ratio_cap"):
        _loss([1.0], 1.0, ratio_cap=1.0)
    with pytest.raises(ValueError, match="clip_low"):
        _loss([1.0], 1.0, clip_low=1.0)
    with pytest.raises(ValueError, match="ref_logps_BT"):
        _loss([1.0], 1.0, kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy_BT"):
        _loss([1.0], 1.0, entropy_coef=0.1)


def test_all_masked_is_zero_and_padding_nan_is_harmless():
    logps = torch.tensor([[-0.5, float("nan")], [float("-inf"), float("nan")]], requires_grad=True)
    old = torch.tensor([[-0.7, float("nan")], [-1.0, 0.0]])
    mask = torch.tensor([[1, 0], [0, 0]])
    loss, m = policy_loss(logps, old, torch.tensor([1.0, -1.0]), mask, **DAPO)
    loss.backward()
    # one active token: r = exp(0.2) = 1.2214 < 1.28 -> loss = -1.2214
    assert loss.item() == pytest.approx(-math.exp(0.2), rel=1e-6)
    assert torch.isfinite(logps.grad).all() and logps.grad[0, 1] == 0 and logps.grad[1].abs().sum() == 0
    empty, m = policy_loss(logps.detach(), old, torch.tensor([1.0, -1.0]), torch.zeros(2, 2), **DAPO)
    assert empty.item() == 0.0 and m["loss/active_tokens"] == 0.0 and m["loss/clip_frac"] == 0.0


def _batch(seed=0, B=6, T=9):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 3, 0, 6, 1, 8])[:B]
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    logps = old + 0.4 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    ref = old + 0.2 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    ent = torch.rand(B, T, generator=gen, dtype=torch.float64) * 2
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    return logps, old, ref, ent, adv, mask


FULL = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.05, kl_estimator="k3", entropy_coef=0.01)


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS)
def test_micro_batch_invariance(agg):
    logps, old, ref, ent, adv, mask = _batch()
    leaf = logps.clone().requires_grad_()
    ent_leaf = ent.clone().requires_grad_()
    full, full_m = policy_loss(leaf, old, adv, mask, ref_logps_BT=ref, entropy_BT=ent_leaf, agg=agg,
                               norm_const=16, **FULL)
    full.backward()
    grad_full, ent_grad_full = leaf.grad.clone(), ent_leaf.grad.clone()

    num_tokens, num_seqs = mask_counts(mask)
    leaf.grad, ent_leaf.grad = None, None
    total, metrics = 0.0, []
    for rows in ([0, 1], [2, 3, 4], [5]):
        width = int(mask[rows].sum(-1).max().clamp(min=1))  # each micro-batch trimmed to its own width
        sl = (rows, slice(0, width))
        loss, m = policy_loss(leaf[sl], old[sl], adv[rows], mask[sl], ref_logps_BT=ref[sl],
                              entropy_BT=ent_leaf[sl], agg=agg, num_tokens=num_tokens, num_seqs=num_seqs,
                              norm_const=16, **FULL)
        loss.backward()  # accumulate: no division by the number of micro-batches
        total += loss.item()
        metrics.append(m)
    assert total == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(leaf.grad, grad_full, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent_leaf.grad, ent_grad_full, atol=1e-6, rtol=0)
    merged = merge_micro_metrics(metrics)
    assert merged.keys() == full_m.keys()
    for key, value in full_m.items():
        assert merged[key] == pytest.approx(value, abs=1e-6), key


def test_micro_batch_with_own_counts_is_not_invariant():
    # the flaw the passed-in denominator fixes: per-micro-batch token-mean, averaged, differs
    logps, old, _, _, adv, mask = _batch()
    full, _ = policy_loss(logps, old, adv, mask, **DAPO)
    parts = [policy_loss(logps[r], old[r], adv[r], mask[r], **DAPO)[0] for r in ([0, 1], [2, 3, 4], [5])]
    assert abs(sum(p.item() for p in parts) / 3 - full.item()) > 1e-3


def _loop_policy_loss(logps, old, adv, mask, agg, clip_low, clip_high, dual_clip, norm_const):
    """Per-token Python loop with verl's compute_policy_loss arithmetic, then the aggregation."""
    seq_vals, token_sum, token_count = [], 0.0, 0
    for b in range(logps.shape[0]):
        per_tok = []
        for t in range(logps.shape[1]):
            if not mask[b, t]:
                continue
            r, a = math.exp(float(logps[b, t] - old[b, t])), float(adv[b])
            loss = max(-a * r, -a * min(max(r, 1 - clip_low), 1 + clip_high))
            if a < 0 and dual_clip:
                loss = min(loss, -a * dual_clip)
            per_tok.append(loss)
        token_sum += sum(per_tok)
        token_count += len(per_tok)
        if per_tok:
            seq_vals.append({"seq-mean-token-sum": sum(per_tok), "seq-mean-token-mean": sum(per_tok) / len(per_tok),
                             "seq-mean-token-sum-norm": sum(per_tok) / norm_const}.get(agg, 0.0))
    return token_sum / token_count if agg == "token-mean" else sum(seq_vals) / len(seq_vals)


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS)
def test_vectorised_matches_loop(agg):
    logps, old, _, _, adv, mask = _batch(seed=3)
    loss, _ = policy_loss(logps, old, adv, mask, agg=agg, norm_const=9, clip_low=0.2, clip_high=0.28,
                          dual_clip=1.5)
    ref = _loop_policy_loss(logps, old, adv, mask, agg, 0.2, 0.28, 1.5, 9)
    assert loss.item() == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS)
def test_gradcheck_float64(agg):
    logps, old, ref, ent, adv, mask = _batch(seed=5)
    # keep ratios away from the clip kinks (finite differences are invalid exactly there)
    r = (logps - old).exp()
    for bound in (0.8, 1.28, 3.0):
        logps = torch.where((r - bound).abs() < 1e-3, logps + 0.01, logps)

    def fn(x, e):
        return policy_loss(x, old, adv, mask, ref_logps_BT=ref, entropy_BT=e, agg=agg, norm_const=9, **FULL)[0]

    assert torch.autograd.gradcheck(fn, (logps.requires_grad_(), ent.requires_grad_()))


def test_clipped_surrogate_token_level_advantages():
    ratio = torch.tensor([[1.5, 0.5]])
    adv = torch.tensor([[1.0, -1.0]])
    # token 1: -min(1.5, 1.28) = -1.28 ; token 2: -min(-0.5, -0.8) = 0.8
    torch.testing.assert_close(clipped_surrogate(ratio, adv, 0.2, 0.28), torch.tensor([[-1.28, 0.8]]))


def test_truncated_importance_sampling_hand_computed():
    """min(pi_old / mu, C) per token multiplies the loss; the weight carries no gradient."""
    from longrl.algo.losses import truncated_is_weights

    old = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    mu = torch.log(torch.tensor([[0.25, 0.4, 0.1]]))  # ratios 2.0, 0.5, 9.0
    torch.testing.assert_close(truncated_is_weights(old, mu, 3.0), torch.tensor([[2.0, 0.5, 3.0]]))
    logps = old.clone().requires_grad_(True)
    mask = torch.tensor([[True, True, False]])
    adv = torch.tensor([1.0])
    plain, _ = policy_loss(logps, old, adv, mask, clip_low=0.2, clip_high=0.2)
    tis, m = policy_loss(logps, old, adv, mask, clip_low=0.2, clip_high=0.2, rollout_logps_BT=mu, tis_cap=3.0)
    # ratio 1 everywhere: per-token loss -A = -1, weighted 2.0 and 0.5 over 2 active tokens
    assert float(plain.detach()) == pytest.approx(-1.0) and float(tis.detach()) == pytest.approx(-(2.0 + 0.5) / 2)
    assert m["rollout/logprob_abs_diff"] == pytest.approx((math.log(2.0) + math.log(2.0)) / 2)
    assert m["rollout/tis_clipped_frac"] == pytest.approx(0.0)  # the 9x token is masked
    _, m2 = policy_loss(logps, old, adv, mask, clip_low=0.2, clip_high=0.2, rollout_logps_BT=mu, tis_cap=1.5)
    assert m2["rollout/tis_clipped_frac"] == pytest.approx(0.5)
    tis.backward()
    # d/dlogp of -w * r * A at r = 1 is -w: the weight scales the gradient and is not differentiated
    torch.testing.assert_close(logps.grad, torch.tensor([[-1.0, -0.25, 0.0]]))
    with pytest.raises(ValueError, match="rollout_logps_BT"):
        policy_loss(logps, old, adv, mask, clip_low=0.2, clip_high=0.2, tis_cap=2.0)
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, mu, 0.5)
