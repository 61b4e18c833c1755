"""Every data setting reaches the curriculum: data.sources[].weight in `longrl pipeline`, and the files of
curriculum.phases[].sources, resolved in one place (longrl.curriculum.samplers.resolve_phases)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from longrl.config import ConfigError, load_config
from longrl.curriculum.samplers import CurriculumSampler, resolve_phases
from longrl.pipeline import Pipeline, PipelineData


def write_source(path, name, n, n_tokens):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{name}{i}", "source": name, "document": f"doc {name} {i}",
                                "question": "q?", "answer": "a", "n_tokens": n_tokens}) + "\n")
    return str(path)


def served(sampler, steps):
    return Counter(s.source for _ in range(steps) for s in sampler.next_batch())


def test_pipeline_honours_data_source_weights(tmp_path):
    a = write_source(tmp_path / "a.jsonl", "a", 40, 10)
    b = write_source(tmp_path / "b.jsonl", "b", 40, 10)
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "rl.prompts_per_step=8",
                             f'data.sources=[{{"path": "{a}", "weight": 3.0}}, {{"path": "{b}", "weight": 1.0}}]'])
    pipe = Pipeline(cfg, progress=False)
    from longrl.pipeline import file_data

    pipe.data = file_data(cfg)
    assert all(s.n_tokens == 10 for s in pipe.data.rl)
    sampler, _ = pipe.curriculum_sampler(0)
    counts = served(sampler, 50)                    # 400 draws; 3:1 gives ~300 / ~100, equal gives ~200 each
    assert counts["a"] / (counts["a"] + counts["b"]) == pytest.approx(0.75, abs=0.06)


def test_phase_sources_are_read_and_served(tmp_path):
    shared = write_source(tmp_path / "shared.jsonl", "shared", 30, 10)
    long_a = write_source(tmp_path / "long_a.jsonl", "long_a", 30, 50)
    long_b = write_source(tmp_path / "long_b.jsonl", "long_b", 30, 50)
    phases = json.dumps([
        {"name": "short", "max_input_tokens": 20},
        {"name": "long", "max_input_tokens": 100,
         "sources": [{"path": long_a, "weight": 1.0}, {"path": long_b, "weight": 4.0}]}])
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "rl.prompts_per_step=10",
                             f'data.sources=[{{"path": "{shared}"}}]', f"curriculum.phases={phases}",
                             "curriculum.retrospective.enabled=false"])
    from longrl.pipeline import file_data

    data = file_data(cfg)
    assert sorted(data.phases) == [1] and len(data.phases[1]) == 60
    specs = resolve_phases(cfg.curriculum, cfg.data.sources, data.rl, phase_samples=data.phases)
    assert specs[0].samples is None and specs[0].weights_by_source is None
    assert {s.source for s in specs[1].samples} == {"long_a", "long_b"}
    assert specs[1].weights_by_source == {"long_a": 1.0, "long_b": 4.0}
    sampler = CurriculumSampler.from_config(data.rl, cfg.curriculum, 10, 0, data_sources=cfg.data.sources,
                                            phase_samples=data.phases)
    assert set(served(sampler, 3)) == {"shared"}
    sampler.advance()
    counts = served(sampler, 30)
    assert set(counts) == {"long_a", "long_b"}
    assert counts["long_b"] / 300 == pytest.approx(0.8, abs=0.07)
    # the pipeline hashes phase data into its manifests, so changing a phase file invalidates stages
    assert "phase/long" in data.hashes()


def test_phase_sources_without_their_samples_is_an_error(tmp_path):
    shared = write_source(tmp_path / "shared.jsonl", "shared", 5, 10)
    phases = json.dumps([{"max_input_tokens": 20, "sources": [{"path": shared}]}])
    cfg = load_config(None, [f'data.sources=[{{"path": "{shared}"}}]', f"curriculum.phases={phases}"])
    with pytest.raises(ConfigError, match=r"curriculum.phases\[0\].sources"):
        resolve_phases(cfg.curriculum, cfg.data.sources, [], phase_samples={})


def test_unequal_weights_need_matching_source_names(tmp_path):
    a = write_source(tmp_path / "a.jsonl", "renamed", 5, 10)
    cfg = load_config(None, [f'data.sources=[{{"path": "{a}", "weight": 2.0}}, {{"path": "{a}", "name": "x"}}]'])
    from longrl.pipeline import file_data

    data = file_data(cfg)
    with pytest.raises(ConfigError, match="data.sources"):
        resolve_phases(cfg.curriculum, cfg.data.sources, data.rl)


def test_pipeline_data_type_still_builds():
    assert PipelineData(sft=[], rl=[]).phases == {}


def test_phase_spec_carries_steps_budget_and_temperature_to_the_run_config(tmp_path):
    """One resolution: a phase's steps / output budget / temperature, or the run's defaults, reach the config
    train_rl trains with (and saves, and compares on resume)."""
    from longrl.train.rl import phase_config

    src = write_source(tmp_path / "s.jsonl", "s", 20, 10)
    phases = json.dumps([{"name": "a", "max_input_tokens": 20},
                         {"name": "b", "max_input_tokens": 40, "steps": 7, "max_output_tokens": 99,
                          "temperature": 0.3}])
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f'data.sources=[{{"path": "{src}"}}]',
                             f"curriculum.phases={phases}", "rl.steps=5", "rollout.max_new_tokens=330",
                             "rollout.temperature=0.9", "reward.overlong.buffer_tokens=16"])
    from longrl.pipeline import file_data

    a, b = CurriculumSampler.for_run(file_data(cfg).rl, cfg).phases
    assert (a.steps, a.max_output_tokens, a.temperature) == (5, 330, 0.9)
    assert (b.steps, b.max_output_tokens, b.temperature) == (7, 99, 0.3)
    run_a, run_b = phase_config(cfg, a), phase_config(cfg, b, seed=11)
    assert (run_a.rl.steps, run_a.rollout.max_new_tokens, run_a.rollout.temperature, run_a.seed) == (5, 330, 0.9, 0)
    assert (run_b.rl.steps, run_b.rollout.max_new_tokens, run_b.rollout.temperature, run_b.seed) == (7, 99, 0.3, 11)
    assert (cfg.rl.steps, cfg.rollout.temperature) == (5, 0.9)          # the run's config is left alone
