import pytest
import torch

from longrl.algo import DynamicBatch, DynamicSamplingError, zero_variance_groups


def test_zero_variance_groups():
    acc = [1, 1, 0, 1, 0, 0, 1]
    groups = ["a", "a", "b", "b", "c", "c", "d"]
    # a: all right, c: all wrong, d: group of one -> dropped ; b: mixed -> kept
    assert zero_variance_groups(acc, groups) == ["a", "c", "d"]
    assert zero_variance_groups(torch.tensor([0.5, 0.51]), torch.tensor([3, 3]), atol=0.02) == [3]
    with pytest.raises(ValueError, match="NaN"):
        zero_variance_groups([1.0, float("nan")], [0, 0])


def test_shaped_score_would_keep_an_all_wrong_group():
    # all wrong (acc 0) but different overlong penalties: score-variance keeps it, acc-variance drops it
    acc, score = [0, 0], [0.0, -0.4]
    assert zero_variance_groups(acc, ["g", "g"]) == ["g"]
    assert zero_variance_groups(score, ["g", "g"]) == []


def test_dynamic_batch_refill_rounds_and_surplus():
    db = DynamicBatch(target_groups=3, max_rounds=4)
    keep = db.add_round([1, 0, 1, 1], ["p0", "p0", "p1", "p1"])  # p0 mixed, p1 constant
    assert keep.tolist() == [True, True, False, False] and db.need == 2 and not db.done
    keep = db.add_round([0, 1, 1, 0, 0, 1], ["p2", "p2", "p3", "p3", "p4", "p4"])
    assert keep.tolist() == [True, True, True, True, False, False]
    assert db.full and db.done
    assert db.finish() == ["p0", "p2", "p3"]
    assert db.dropped == ["p1"] and db.surplus == ["p4"]
    assert db.metrics() == {"sampling/kept_groups": 3.0, "sampling/filtered_groups": 1.0,
                            "sampling/surplus_groups": 1.0, "sampling/rounds": 2.0, "sampling/cap_hit": 0.0}
    with pytest.raises(RuntimeError, match="done"):
        db.add_round([0, 1], ["p9", "p9"])


def test_dynamic_batch_cap_policies():
    for on_cap in ("proceed", "raise"):
        db = DynamicBatch(target_groups=2, max_rounds=1, on_cap=on_cap)
        db.add_round([0, 1, 1, 1], [0, 0, 1, 1])
        assert db.done and not db.full
        if on_cap == "proceed":
            assert db.finish() == [0] and db.metrics()["sampling/cap_hit"] == 1.0
        else:
            with pytest.raises(DynamicSamplingError, match="1/2 groups after 1 round"):
                db.finish()


def test_dynamic_batch_errors():
    with pytest.raises(ValueError, match="on_cap"):
        DynamicBatch(target_groups=1, max_rounds=1, on_cap="retry")
    db = DynamicBatch(target_groups=4, max_rounds=3)
    db.add_round([0, 1], ["a", "a"])
    with pytest.raises(ValueError, match="already seen"):
        db.add_round([0, 1], ["a", "a"])
