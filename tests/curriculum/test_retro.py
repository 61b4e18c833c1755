"""Retrospective pool: recording, transition rules, difficulty-weighted draws, mixing, state."""

import json
import random

import pytest

from longrl.curriculum.phases import PhaseSampler, sample_key
from longrl.curriculum.retro import MixedSampler, RetrospectivePool, difficulty_from_accuracy, retro_count
from longrl.data.records import DocQASample


def mk(name, n_tokens=100, source="a"):
    return DocQASample(id=name, source=source, task="qa", document="d", question="q", answers=["x"],
                       n_tokens=n_tokens)


def test_difficulty_is_bounded_one_minus_accuracy():
    assert [difficulty_from_accuracy(a) for a in (0.0, 0.25, 1.0, -3.0, 2.0)] == [1.0, 0.75, 0.0, 1.0, 0.0]


def test_record_accumulates_mean_count_and_last_step():
    pool, s = RetrospectivePool(), mk("s")
    pool.record(s, [1, 0, 0, 0], step=3)
    pool.record(s, [1, 1, 5.0, 0], step=7)  # 5.0 is clipped to 1
    st = pool.stats[sample_key(s)]
    assert (st.count, st.last_step) == (8, 7)
    assert st.mean_acc == pytest.approx(4 / 8)
    assert pool.difficulty(s) == pool.difficulty("a/s") == pytest.approx(0.5)
    with pytest.raises(KeyError):
        pool.difficulty("a/never")


def test_transition_rules_on_a_hand_made_pool():
    # threshold 0.5, cap 3, next phase (400, 800] with 200 output tokens
    pool = RetrospectivePool(hard_threshold=0.5, cap=3)
    pool.record(mk("a"), [0, 0, 0, 0], step=1)                        # difficulty 1.0: kept
    pool.record(mk("b"), [1, 1, 1, 0], step=1)                        # 0.25 < 0.5: easy
    pool.record(mk("c"), [1, 1, 0, 0], step=2)                        # 0.5 (boundary): kept
    pool.record(mk("d", n_tokens=900), [0, 0], step=2)                # input 900 > 800: input budget
    pool.record(mk("e"), [0, 0], step=2, response_tokens=[300, 250])  # mean 275 > 200: output budget
    pool.record(mk("f", source="b"), [1, 0, 0, 0], step=2)            # 0.75: kept
    summary = pool.transition(400, 800, max_output_tokens=200)
    assert [s.id for s in pool.samples()] == ["a", "f", "c"]  # listed hardest first
    assert summary["retro/dropped_easy"] == 1
    assert summary["retro/dropped_input_budget"] == 1
    assert summary["retro/dropped_output_budget"] == 1
    assert summary["retro/dropped_cap"] == 0
    assert summary["retro/pool_size"] == 3
    assert summary["retro/source/a"] == 2 and summary["retro/source/b"] == 1
    assert summary["retro/difficulty_hist"] == [0] * 5 + [1, 0, 1, 0, 1]
    assert summary["retro/candidate_hist"] == summary["retro/difficulty_hist"]
    assert summary["retro/mean_difficulty"] == pytest.approx(0.75)


def test_transition_drops_members_that_got_solved():
    pool = RetrospectivePool(hard_threshold=0.5, cap=10)
    pool.record(mk("old"), [0, 0], step=1)
    pool.record(mk("new"), [0, 0], step=5)
    pool.transition(100, 200)
    assert [s.id for s in pool.samples()] == ["new", "old"]  # equal difficulty: most recent first
    pool.record(mk("new"), [1] * 10, step=9)  # solved in the next phase: difficulty 2/12 = 0.17
    pool.transition(200, 400)
    assert [s.id for s in pool.samples()] == ["old"]


def spread_population(pool, n_per_level=100, rollouts=8, family_of=None):
    """``n_per_level`` samples at each difficulty k/8, k = 0..8 (k correct rollouts of 8)."""
    for k in range(rollouts + 1):
        for i in range(n_per_level):
            s = mk(f"k{k}-{i}")
            if family_of:
                s.metadata["family"] = family_of(k)
            pool.record(s, [1] * (rollouts - k) + [0] * k, step=i)


def test_capped_pool_spans_the_difficulty_range_and_serves_in_proportion_to_difficulty():
    # 900 recorded samples, 100 at each difficulty 0, 1/8, ..., 1; 800 unsolved candidates, cap 200.
    # Keeping the hardest 200 (the old rule) would hold difficulty-1 samples only.
    pool = RetrospectivePool(hard_threshold=0.0, cap=200, seed=3)
    spread_population(pool, family_of=lambda k: "numeric" if k == 8 else "lookup")
    summary = pool.transition(0, 1000)
    assert summary["retro/dropped_easy"] == 100 and summary["retro/dropped_cap"] == 600
    assert summary["retro/pool_size"] == 200
    assert summary["retro/candidate_hist"] == [0, 100, 100, 100, 0, 100, 100, 100, 100, 100]
    assert sum(1 for c in summary["retro/difficulty_hist"] if c) == 8  # every candidate level is there
    assert summary["retro/mean_difficulty"] == pytest.approx(4.5 / 8, abs=0.05)  # the candidates' mean
    assert summary["retro/family/numeric"] + summary["retro/family/lookup"] == 200
    # the same seed and transition count choose the same pool
    again = RetrospectivePool(hard_threshold=0.0, cap=200, seed=3)
    spread_population(again, family_of=lambda k: "x")
    again.transition(0, 1000)
    assert [s.id for s in again.samples()] == [s.id for s in pool.samples()]

    fresh = [mk(f"f{i}", source="fresh") for i in range(50)]
    mixed = MixedSampler(PhaseSampler(fresh, 8, 0), pool, 0.5, seed=0)
    for _ in range(2000):
        mixed.next_batch()
    served = mixed.summary()["curriculum/retro_served_hist"]
    assert sum(served) == 8000
    # expected: pool members at each level times their difficulty (each level has its own bin)
    levels = {}
    for s in pool.samples():
        d = pool.difficulty(s)
        levels[d] = levels.get(d, 0) + 1
    weight = {d: n * d for d, n in levels.items()}
    total = sum(weight.values())
    observed = [served[min(9, int(d * 10))] for d in sorted(weight)]
    expected = [8000 * weight[d] / total for d in sorted(weight)]
    assert chi_square(observed, expected) < 24.32  # chi2(df=7) at p = 0.001


def chi_square(observed, expected):
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected))


@pytest.mark.parametrize("replace", [False, True])
def test_draw_matches_difficulty_distribution(replace):
    pool = RetrospectivePool(hard_threshold=0.1, cap=10)
    accs = {"w1": [0, 0, 0, 0], "w2": [1, 0, 0, 0], "w3": [1, 1, 0, 0], "w4": [1, 1, 1, 0]}
    for name, a in accs.items():
        pool.record(mk(name), a)
    pool.transition(0, 1000)
    rng, n = random.Random(0), 20000
    if replace:
        drawn = [s.id for s in pool.draw(n, rng, replace=True)]
    else:
        drawn = [pool.draw(1, rng)[0].id for _ in range(n)]
    observed = [drawn.count(k) for k in accs]
    expected = [n * d / 2.5 for d in (1.0, 0.75, 0.5, 0.25)]  # difficulties sum to 2.5
    assert chi_square(observed, expected) < 16.27  # chi2(df=3) at p = 0.001


def test_solved_samples_never_enter_the_pool_or_get_drawn():
    pool = RetrospectivePool(hard_threshold=0.0, cap=10)
    pool.record(mk("hard"), [0])
    pool.record(mk("solved"), [1])
    assert pool.transition(0, 1000)["retro/dropped_easy"] == 1
    assert len(pool) == 1
    pool.members.append("a/solved")  # a pool restored from an older state may still hold one
    assert [s.id for s in pool.draw(5, random.Random(0))] == ["hard"]
    assert RetrospectivePool().draw(3, random.Random(0)) == []


def test_retro_count_hits_the_fraction_exactly_over_time():
    assert [retro_count(t, 4, 0.25) for t in range(4)] == [1, 1, 1, 1]
    assert sum(retro_count(t, 4, 0.3) for t in range(10)) == 12
    assert sum(retro_count(t, 8, 0.0) for t in range(10)) == 0


def test_mixed_sampler_composition_and_fallback_to_fresh():
    fresh = [mk(f"f{i}", source="fresh") for i in range(10)]
    pool = RetrospectivePool(hard_threshold=0.5, cap=10)
    empty = MixedSampler(PhaseSampler(fresh, 4, 0), pool, 0.5, seed=0)
    assert all(len(empty.next_batch()) == 4 for _ in range(3))
    assert empty.summary()["curriculum/retro_samples"] == 0
    for i in range(3):
        pool.record(mk(f"r{i}", source="old"), [0, 0])
    pool.transition(0, 1000)
    mixed = MixedSampler(PhaseSampler(fresh, 4, 0), pool, 0.5, seed=0)
    for _ in range(5):
        batch = mixed.next_batch()
        assert [s.source for s in batch] == ["old", "old", "fresh", "fresh"]
    summary = mixed.summary()
    assert summary["curriculum/retro_fraction"] == 0.5
    assert summary["retro/pool_size"] == 3 and summary["retro/source/old"] == 3


def test_pool_state_round_trip_resolves_samples():
    pool = RetrospectivePool(hard_threshold=0.5, cap=5)
    samples = [mk(f"s{i}") for i in range(4)]
    for i, s in enumerate(samples):
        pool.record(s, [i % 2, 0], step=i, response_tokens=[10, 20])
    pool.transition(100, 200)
    state = json.loads(json.dumps(pool.state_dict()))
    restored = RetrospectivePool()
    restored.load_state_dict(state, samples)
    assert restored.state_dict() == pool.state_dict()
    assert restored.summary() == pool.summary()
    with pytest.raises(ValueError, match="not found"):
        RetrospectivePool().load_state_dict(state, samples[:2])
