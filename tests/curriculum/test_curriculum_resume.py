"""The curriculum driver: an interrupted-and-resumed run equals an uninterrupted one (DESIGN rule 7)."""

import json
import zlib

import pytest

from longrl.config import CurriculumConfig, PhaseConfig, RetrospectiveConfig
from longrl.curriculum import CurriculumSampler, PhaseSpec, sample_key
from longrl.data.records import DocQASample

PHASES = [PhaseSpec(100), PhaseSpec(200, weights_by_source={"a": 1.0, "b": 3.0}), PhaseSpec(400)]
STEPS = [5, 4, 4]


def make_samples():
    out = []
    for i in range(60):
        n_tokens = (50, 150, 300)[i % 3] + i
        out.append(DocQASample(id=f"s{i}", source="ab"[i % 2], task=("qa", "mcq", "numeric")[i % 3 if i % 5 else 0],
                               document="d", question="q", answers=["x"], n_tokens=n_tokens))
    return out


def accs(sample, step):
    """Deterministic fake rollout accuracies: a third of the samples are never solved."""
    h = zlib.crc32(sample_key(sample).encode())
    return [0.0] * 4 if h % 3 == 0 else [float((h + step + g) % 2) for g in range(4)]


def events():
    out = []
    for k, n in enumerate(STEPS):
        out += ["batch"] * n + (["advance"] if k < len(STEPS) - 1 else [])
    return out


def new_sampler(samples):
    return CurriculumSampler(samples, PHASES, batch_size=4, seed=3, task_balanced=True, retro_fraction=0.25,
                             hard_threshold=0.5, cap=6)


def play(cs, evs, trace):
    for ev in evs:
        if ev == "advance":
            trace.append(cs.advance())
            continue
        batch = cs.next_batch()
        trace.append([sample_key(s) for s in batch])
        for s in batch:
            cs.record(s, accs(s, cs.global_step))
    trace.append(cs.summary())


def run_interrupted(cut):
    samples, evs, trace = make_samples(), events(), []
    first = new_sampler(samples)
    play(first, evs[:cut], trace)
    trace.pop()  # the summary at the cut is not part of the uninterrupted trace
    state = json.loads(json.dumps(first.state_dict()))
    second = new_sampler(make_samples())
    second.load_state_dict(state)
    play(second, evs[cut:], trace)
    return trace


def test_uninterrupted_run_mixes_retrospective_samples_in_later_phases():
    cs, trace = new_sampler(make_samples()), []
    play(cs, events(), trace)
    transition = trace[5]
    assert transition["retro/pool_size"] > 0 and "retro/difficulty_hist" in transition
    later = [k for batch in trace[6:10] for k in batch]
    by_key = {sample_key(s): s for s in make_samples()}
    assert sum(by_key[k].n_tokens <= 100 for k in later) == 4  # one pool slot per batch of 4
    assert trace[-1]["curriculum/phase"] == 2


# cut 3: mid phase 1; 5: phase 1 done, before advance; 6: right after advance; 8: mid phase 2;
# 10: before the second advance; 11: right after it
@pytest.mark.parametrize("cut", [3, 5, 6, 8, 10, 11])
def test_resume_equals_uninterrupted(cut):
    expected = []
    play(new_sampler(make_samples()), events(), expected)
    assert run_interrupted(cut) == expected


def test_from_config_and_errors():
    cfg = CurriculumConfig(phases=[PhaseConfig(name="short", max_input_tokens=100, max_output_tokens=50),
                                   PhaseConfig(name="long", max_input_tokens=400)],
                           retrospective=RetrospectiveConfig(fraction=0.5, cap=3), task_balanced=False)
    cs = CurriculumSampler.from_config(make_samples(), cfg, batch_size=2, seed=0, default_output_tokens=80)
    assert [p.max_output_tokens for p in cs.phases] == [50, 80]
    assert (cs.pool.cap, cs.retro_fraction) == (3, 0.5)
    assert len(cs.next_batch()) == 2
    cs.advance()
    with pytest.raises(ValueError, match="last phase"):
        cs.advance()
    single = CurriculumSampler.from_config(make_samples(), CurriculumConfig(), batch_size=2, seed=0)
    assert single.bounds == [(0, max(s.n_tokens for s in make_samples()))]
    with pytest.raises(ValueError, match="no samples"):
        CurriculumSampler(make_samples(), [PhaseSpec(10)], batch_size=2, seed=0)
