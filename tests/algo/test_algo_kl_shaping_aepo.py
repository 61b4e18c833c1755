import math

import pytest
import torch

from longrl.algo import entropy_from_logits, entropy_negative_mask, kl_estimate, overlong_penalty


def test_kl_estimators_hand_computed():
    # pi = 0.5, pi_ref = 0.25 -> log r = log(0.25 / 0.5) = -log 2 = -0.693147
    # k1 = -log r = 0.693147 ; k2 = 0.5 * 0.693147^2 = 0.240227 ; k3 = r - log r - 1 = 0.5 + 0.693147 - 1
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    l2 = math.log(2)
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([l2]))
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), torch.tensor([0.5 * l2 * l2]))
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), torch.tensor([0.5 + l2 - 1]))
    assert float(kl_estimate(logp, logp, "k3")) == 0.0


def test_k3_clamps():
    # output clamp: log r = 5 gives exp(5) - 5 - 1 = 142.41 -> 10; log r = -1 gives e^-1 + 1 - 1 = 0.3679 (inside)
    out = kl_estimate(torch.tensor([0.0, 0.0]), torch.tensor([5.0, -1.0]), "k3")
    torch.testing.assert_close(out, torch.tensor([10.0, 0.36788]), atol=1e-5, rtol=0)
    # log-ratio clamp: a token the policy gives probability 0 (log p = -inf) has log r = +inf; unclamped,
    # exp(inf) - inf - 1 is NaN (inf - inf), which no output clamp removes; clamped to 20 it is 10
    out = kl_estimate(torch.tensor([float("-inf")]), torch.tensor([-1.0]), "k3")
    assert torch.equal(out, torch.tensor([10.0]))
    with pytest.raises(ValueError, match="unknown KL"):
        kl_estimate(out, out, "k4")


def test_kl_gradcheck():
    logp = torch.tensor([[-0.3, -1.2, -2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-0.5, -0.7, -2.5]], dtype=torch.float64)
    for kind in ("k1", "k2", "k3"):
        assert torch.autograd.gradcheck(lambda x, k=kind: kl_estimate(x, ref, k), (logp,))


def test_entropy_from_logits():
    # uniform over 4 -> log 4 = 1.386294 ; [1000, 0] -> ~0 and finite
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0]]])
    ent = entropy_from_logits(logits)
    torch.testing.assert_close(ent, torch.tensor([[math.log(4), 0.0]]))
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(entropy_from_logits(x), torch.distributions.Categorical(logits=x).entropy())
    assert torch.autograd.gradcheck(entropy_from_logits, (x.requires_grad_(),))


def test_overlong_penalty_hand_computed():
    # L_max = 100, L_cache = 20: 0 up to 80, then -(L - 80) / 20: 85 -> -0.25, 90 -> -0.5, 100 -> -1
    pen = overlong_penalty([0, 80, 85, 90, 100, 120], max_len=100, buffer=20, factor=1.0)
    torch.testing.assert_close(pen, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    half = overlong_penalty(torch.tensor([90, 100]), max_len=100, buffer=20, factor=0.5)
    torch.testing.assert_close(half, torch.tensor([-0.25, -0.5]))
    # buffer 0: a step at L_max
    torch.testing.assert_close(overlong_penalty([100, 101], 100, 0, 2.0), torch.tensor([0.0, -2.0]))


def test_overlong_penalty_errors():
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty([1], max_len=10, buffer=11)
    with pytest.raises(ValueError, match="factor"):
        overlong_penalty([1], max_len=10, buffer=5, factor=-1)
    with pytest.raises(ValueError, match="lengths"):
        overlong_penalty([-1], max_len=10, buffer=5)


def _aepo_inputs():
    adv_B = torch.tensor([1.0, -1.0, -1.0])
    entropy_BT = torch.tensor([[3.0, 0.1, 0.1], [3.0, 0.1, 0.1], [0.5, 0.4, 9.0]])
    mask_BT = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]], dtype=torch.float32)
    return adv_B, entropy_BT, mask_BT


def test_aepo_token_level():
    adv_B, entropy_BT, mask_BT = _aepo_inputs()
    out = entropy_negative_mask(adv_B, entropy_BT, mask_BT, threshold=1.0, level="token")
    # positive row untouched; negative rows lose tokens with H > 1 (row 2's H=9 token is padding anyway)
    assert out.tolist() == [[1, 1, 1], [0, 1, 1], [1, 1, 0]]


def test_aepo_sequence_level():
    adv_B, entropy_BT, mask_BT = _aepo_inputs()
    # mean active entropy: row 1 = (3 + .1 + .1) / 3 = 1.0667 > 1 -> dropped ; row 2 = (.5 + .4) / 2 = .45 kept
    out = entropy_negative_mask(adv_B, entropy_BT, mask_BT, threshold=1.0, level="sequence")
    assert out.tolist() == [[1, 1, 1], [0, 0, 0], [1, 1, 0]]


def test_aepo_batch_level_and_off():
    adv_B, entropy_BT, mask_BT = _aepo_inputs()
    # batch mean over 8 active tokens: (3.2 + 3.2 + 0.9) / 8 = 0.9125
    kept = entropy_negative_mask(adv_B, entropy_BT, mask_BT, threshold=1.0, level="batch")
    assert torch.equal(kept, mask_BT)
    dropped = entropy_negative_mask(adv_B, entropy_BT, mask_BT, threshold=0.9, level="batch")
    assert dropped.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]
    forced = entropy_negative_mask(adv_B, entropy_BT, mask_BT, threshold=1.0, level="batch", batch_entropy=2.0)
    assert forced.tolist() == dropped.tolist()
    assert entropy_negative_mask(adv_B, entropy_BT, mask_BT, threshold=0.0) is mask_BT
    bool_out = entropy_negative_mask(adv_B, entropy_BT, mask_BT.bool(), threshold=1.0)
    assert bool_out.dtype == torch.bool
