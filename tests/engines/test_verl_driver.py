"""The driver-side pieces of longrl's verl trainer as pure code (core environment, no verl needed): the
task book the ``longrl_task_std`` estimator reads and AEPO on one step's padded tensors, against the own
trainer's AEPO rule (``longrl.train.rl.aepo_batch_rule``) and ``longrl.algo.aepo``. Their use inside
verl's trainer and ``compute_advantage`` is tested in test_verl_engine.py (``make test-verl``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from longrl.algo.aepo import AEPOState, entropy_negative_mask
from longrl.engines.verl.driver import KEEP_STEPS, AEPOControl, TaskBook, row_advantages, row_task


def test_row_task_reads_extra_info_then_the_data_source():
    assert row_task("docmath_x", {"task": "mcq"}) == "mcq"
    assert row_task("docmath_x", {"task": "bogus"}) == "numeric"
    assert row_task("long_toc_choices", None) == "mcq" and row_task(None, {}) == "qa"


def test_task_book_records_prunes_and_names_the_trainer_mode_for_unknown_uids():
    book = TaskBook()
    book.record(["u1", "u2"], ["docmath", "x"], [{"task": "numeric"}, {"task": "mcq"}], step=1)
    assert book.tasks(["u2", "u1", "u2"]) == ["mcq", "numeric", "mcq"]
    book.record(["u3"], ["x"], [{}], step=1 + KEEP_STEPS)
    assert book.tasks(["u1"]) == ["numeric"]  # still within KEEP_STEPS
    book.record(["u4"], ["x"], [{}], step=2 + KEEP_STEPS)
    with pytest.raises(LookupError, match=r"trainer\.v1\.trainer_mode=longrl") as e:
        book.tasks(["u1", "u3"])  # u1 was drawn more than KEEP_STEPS steps ago
    assert "1 of 2" in str(e.value) and "u1" in str(e.value)
    with pytest.raises(ValueError):
        book.record(["u5", "u6"], ["x"], [{}, {}], step=9)  # misaligned columns are a bug, not data


def test_row_advantages_read_the_first_active_token():
    adv_BT = torch.tensor([[0.0, -0.5, -0.5], [0.75, 0.75, 0.0], [0.0, 0.0, 0.0]])
    mask_BT = torch.tensor([[0, 1, 1], [1, 1, 0], [0, 0, 0]])
    assert row_advantages(adv_BT, mask_BT).tolist() == [-0.5, 0.75, 0.0]


def steps(seed: int, n: int, B: int = 6, T: int = 5):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        adv_B = torch.randn(B, generator=g)
        len_B = torch.randint(1, T + 1, (B,), generator=g)
        mask_BT = (torch.arange(T)[None, :] < len_B[:, None]).float()
        yield adv_B, adv_B[:, None] * mask_BT, torch.rand(B, T, generator=g) * 2, mask_BT


def test_aepo_batch_control_follows_the_own_trainer_rule_across_steps():
    from longrl.train.rl import aepo_batch_rule

    control = AEPOControl("batch", low=0.8, high=1.05)
    own = SimpleNamespace(aepo=AEPOState(0.8, 1.05))
    states = []
    for adv_B, adv_BT, ent_BT, mask_BT in steps(0, 12):
        # the own trainer: per-sequence masks, the batch entropy over every active token
        seqs = [SimpleNamespace(adv=float(a), mask=m.bool()) for a, m in zip(adv_B, mask_BT, strict=True)]
        active = mask_BT.bool()
        want_metrics = aepo_batch_rule(own, seqs, float(ent_BT[active].sum()), int(active.sum()))
        got_BT, got_metrics = control.apply(adv_BT, ent_BT, mask_BT)
        assert torch.equal(got_BT.bool(), torch.stack([s.mask for s in seqs]))
        assert got_metrics == pytest.approx(want_metrics)
        states.append(control.state.active)
    assert True in states and False in states  # the band was crossed both ways
    saved = control.state_dict()
    again = AEPOControl("batch", low=0.8, high=1.05)
    again.load_state_dict(saved)
    assert again.state.active == control.state.active


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_aepo_threshold_levels_equal_longrl_mask(level):
    control = AEPOControl(level, threshold=1.0)
    for adv_B, adv_BT, ent_BT, mask_BT in steps(1, 3):
        got_BT, metrics = control.apply(adv_BT, ent_BT, mask_BT)
        want_BT = entropy_negative_mask(adv_B, ent_BT, mask_BT, 1.0, level)
        assert torch.equal(got_BT, want_BT)
        assert metrics["aepo/masked_token_frac"] == pytest.approx(1 - float(want_BT.sum() / mask_BT.sum()))


def test_aepo_settings_are_checked():
    assert AEPOControl.from_settings(None) is None and AEPOControl.from_settings({"level": None}) is None
    with pytest.raises(ValueError, match="high"):
        AEPOControl.from_settings({"level": "batch", "low": 0.1, "high": 0.0})
    with pytest.raises(ValueError, match="threshold"):
        AEPOControl("token")
    with pytest.raises(ValueError, match="level"):
        AEPOControl("step", threshold=1.0)
