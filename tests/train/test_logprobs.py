"""Chunked log-prob/entropy kernel against the naive full-logits computation."""

from __future__ import annotations

import pytest
import torch

from longrl.train.logprobs import token_logprobs_entropy


def _naive(hidden_BTH, weight_VH, targets_BT, temperature):
    logp_BTV = torch.log_softmax(hidden_BTH @ weight_VH.T / temperature, dim=-1)
    logp_BT = logp_BTV.gather(-1, targets_BT.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logp_BT = torch.where(targets_BT >= 0, logp_BT, 0.0)
    entropy_BT = -(logp_BTV.exp() * logp_BTV).sum(-1)
    return logp_BT, entropy_BT


def _inputs(seed=0, b=2, t=37, h=16, v=101):
    g = torch.Generator().manual_seed(seed)
    hidden_BTH = torch.randn(b, t, h, generator=g, dtype=torch.float64).float().requires_grad_()
    weight_VH = torch.randn(v, h, generator=g).requires_grad_()
    targets_BT = torch.randint(0, v, (b, t), generator=g)
    return hidden_BTH, weight_VH, targets_BT


def test_two_tokens_by_hand():
    # h = [[1, 0]], W = [[0, 0], [ln 3, 0]] -> logits [0, ln 3] -> p = [1/4, 3/4]
    hidden_BTH = torch.tensor([[[1.0, 0.0]]])
    weight_VH = torch.tensor([[0.0, 0.0], [float(torch.log(torch.tensor(3.0))), 0.0]])
    logp_BT, ent_BT = token_logprobs_entropy(hidden_BTH, weight_VH, torch.tensor([[1]]))
    assert logp_BT.item() == pytest.approx(float(torch.log(torch.tensor(0.75))), abs=1e-6)
    # H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623
    assert ent_BT.item() == pytest.approx(0.562335, abs=1e-5)


@pytest.mark.parametrize("chunk,temperature", [(5, 1.0), (16, 0.7), (1024, 1.3)])
def test_matches_naive_values_and_grads(chunk, temperature):
    hidden_BTH, weight_VH, targets_BT = _inputs()
    targets_BT[1, -3:] = -100
    w_lp_BT, w_ent_BT = torch.randn(2, 2, 37, generator=torch.Generator().manual_seed(1))
    logp_BT, ent_BT = token_logprobs_entropy(hidden_BTH, weight_VH, targets_BT, chunk, temperature)
    ((logp_BT * w_lp_BT).sum() + (ent_BT * w_ent_BT).sum()).backward()
    grads = hidden_BTH.grad.clone(), weight_VH.grad.clone()
    hidden_BTH.grad = weight_VH.grad = None
    ref_lp_BT, ref_ent_BT = _naive(hidden_BTH, weight_VH, targets_BT, temperature)
    ((ref_lp_BT * w_lp_BT).sum() + (ref_ent_BT * w_ent_BT).sum()).backward()
    torch.testing.assert_close(logp_BT, ref_lp_BT, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_BT, ref_ent_BT, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], hidden_BTH.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], weight_VH.grad, atol=1e-5, rtol=1e-5)
    assert logp_BT[1, -3:].eq(0).all()


def test_without_entropy_and_logp_only_grad():
    hidden_BTH, weight_VH, targets_BT = _inputs(seed=3)
    logp_BT, ent_BT = token_logprobs_entropy(hidden_BTH, weight_VH, targets_BT, chunk=8, with_entropy=False)
    assert ent_BT is None
    logp_BT.sum().backward()
    grad_h = hidden_BTH.grad.clone()
    hidden_BTH.grad = None
    _naive(hidden_BTH, weight_VH, targets_BT, 1.0)[0].sum().backward()
    torch.testing.assert_close(grad_h, hidden_BTH.grad, atol=1e-5, rtol=1e-5)


def test_entropy_only_loss_has_grad():
    hidden_BTH, weight_VH, targets_BT = _inputs(seed=4)
    _, ent_BT = token_logprobs_entropy(hidden_BTH, weight_VH, targets_BT, chunk=7)
    ent_BT.sum().backward()
    grad_w = weight_VH.grad.clone()
    weight_VH.grad = None
    _naive(hidden_BTH, weight_VH, targets_BT, 1.0)[1].sum().backward()
    torch.testing.assert_close(grad_w, weight_VH.grad, atol=1e-5, rtol=1e-5)


def test_bfloat16_close_to_float32():
    hidden_BTH, weight_VH, targets_BT = _inputs(seed=5)
    ref_lp_BT, _ = token_logprobs_entropy(hidden_BTH, weight_VH, targets_BT)
    lp_BT, _ = token_logprobs_entropy(hidden_BTH.bfloat16(), weight_VH.bfloat16(), targets_BT)
    assert lp_BT.dtype == torch.float32
    torch.testing.assert_close(lp_BT, ref_lp_BT, atol=0.3, rtol=0.05)
