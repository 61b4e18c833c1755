"""Phase bucketing and the fresh-data sampler."""

import json
from collections import Counter

import pytest

from longrl.curriculum.phases import PhaseSampler, phase_bounds, phase_of, sample_key, samples_for_phase
from longrl.data.records import DocQASample


def mk(i, n_tokens=10, source="a", task="qa"):
    return DocQASample(id=f"s{i}", source=source, task=task, document="d", question="q", answers=["x"],
                       n_tokens=n_tokens)


def keys(batch):
    return [sample_key(s) for s in batch]


def test_phase_bounds_and_validation():
    assert phase_bounds([10, 20, 40]) == [(0, 10), (10, 20), (20, 40)]
    with pytest.raises(ValueError):
        phase_bounds([10, 10])
    with pytest.raises(ValueError):
        phase_bounds([0])


def test_samples_for_phase_is_left_open_right_closed():
    pool = [mk(i, n) for i, n in enumerate([5, 10, 11, 20, 21, 40, 41])]
    assert [s.n_tokens for s in samples_for_phase(pool, 0, 10)] == [5, 10]
    assert [s.n_tokens for s in samples_for_phase(pool, 10, 20)] == [11, 20]
    assert [s.n_tokens for s in samples_for_phase(pool, 20, 40)] == [21, 40]
    bounds = phase_bounds([10, 20, 40])
    assert [phase_of(n, bounds) for n in (1, 10, 11, 40, 41)] == [0, 0, 1, 2, None]
    with pytest.raises(ValueError, match="token count"):
        samples_for_phase([mk(0, -1)], 0, 10)


def test_deterministic_by_seed_and_epoch_covers_every_sample_once():
    samples = [mk(i) for i in range(9)]
    a, b, c = (PhaseSampler(samples, 3, seed) for seed in (0, 0, 1))
    seq_a = [keys(a.next_batch()) for _ in range(6)]
    assert seq_a == [keys(b.next_batch()) for _ in range(6)]
    assert seq_a != [keys(c.next_batch()) for _ in range(6)]
    first_epoch = sum(seq_a[:3], [])
    assert sorted(first_epoch) == sorted(keys(samples))
    assert sorted(sum(seq_a[3:], [])) == sorted(keys(samples))


def test_source_weights_set_the_mixture():
    samples = [mk(i, source="a") for i in range(20)] + [mk(i, source="b") for i in range(20)]
    sampler = PhaseSampler(samples, 8, seed=0, weights_by_source={"a": 3.0, "b": 1.0})
    counts = Counter(s.source for _ in range(200) for s in sampler.next_batch())
    assert abs(counts["a"] / 1600 - 0.75) < 0.03  # binomial sd ~ 0.011
    with pytest.raises(ValueError, match="no weight"):
        PhaseSampler(samples, 8, seed=0, weights_by_source={"a": 1.0})


def test_task_balanced_batches_have_equal_counts_per_task():
    samples = ([mk(i, task="qa") for i in range(30)] + [mk(100 + i, task="numeric") for i in range(3)]
               + [mk(200 + i, task="mcq", source="b") for i in range(5)])
    sampler = PhaseSampler(samples, 6, seed=0, task_balanced=True)
    for _ in range(10):
        assert Counter(s.task for s in sampler.next_batch()) == {"qa": 2, "numeric": 2, "mcq": 2}
    odd = PhaseSampler(samples, 4, seed=0, task_balanced=True)
    total = Counter()
    for _ in range(3):  # 4 = 3 * 1 + 1: the extra slot rotates over the tasks
        c = Counter(s.task for s in odd.next_batch())
        assert max(c.values()) - min(c.values()) <= 1
        total += c
    assert total == {"qa": 4, "numeric": 4, "mcq": 4}


@pytest.mark.parametrize("task_balanced", [False, True])
def test_resume_equals_uninterrupted(task_balanced):
    samples = [mk(i, source="ab"[i % 2], task=("qa", "mcq", "numeric")[i % 3]) for i in range(13)]
    ref = PhaseSampler(samples, 4, 7, {"a": 1.0, "b": 2.0}, task_balanced)
    expected = [keys(ref.next_batch()) for _ in range(12)]
    first = PhaseSampler(samples, 4, 7, {"a": 1.0, "b": 2.0}, task_balanced)
    got = [keys(first.next_batch()) for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))
    second = PhaseSampler(list(reversed(samples)), 4, 7, {"a": 1.0, "b": 2.0}, task_balanced)
    second.load_state_dict(state)
    got += [keys(second.next_batch()) for _ in range(7)]
    assert got == expected


def test_load_state_rejects_other_samples():
    state = PhaseSampler([mk(i) for i in range(5)], 2, 0).state_dict()
    with pytest.raises(ValueError, match="different samples"):
        PhaseSampler([mk(i) for i in range(6)], 2, 0).load_state_dict(state)
