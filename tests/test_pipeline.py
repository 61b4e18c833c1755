"""The staged pipeline: manifests, resume (completed stage, 'trained' stage, mid-stage checkpoint, across
a phase boundary), --from-stage / --until-stage, and guards against reusing stages made from other inputs."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch

from longrl.config import ConfigError
from longrl.pipeline import (
    STAGE_EVAL,
    Pipeline,
    StageError,
    read_manifest,
    select_stages,
    stage_dir,
    stage_names,
)

STAGES = ["init", "sft", "phase1", "phase2", "eval"]


def quick_cfg(out, *overrides):
    from longrl.demo import demo_config

    args = argparse.Namespace(config="", model="", seed=0, quick=True, threads=1, out=str(out),
                              overrides=["logging.progress=false", *overrides])
    return demo_config(args)


def run(cfg, **kw):
    events = []
    Pipeline(cfg, on_event=events.append, progress=False).run(**kw)
    return [(e.stage, e.kind) for e in events]


def final_weights(cfg, stage):
    from safetensors.torch import load_file

    return load_file(str(stage_dir(cfg, stage) / "final" / "model.safetensors"))


def table(cfg):
    return read_manifest(stage_dir(cfg, STAGE_EVAL))["metrics"]["table"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = quick_cfg(tmp_path_factory.mktemp("pipe") / "run")
    events = run(cfg)
    return cfg, events


def test_stage_names_and_selection():
    cfg = quick_cfg("unused")
    assert stage_names(cfg) == STAGES
    assert select_stages(STAGES, None, None) == (0, 5)
    assert select_stages(STAGES, "phase1", "phase2") == (2, 4)
    with pytest.raises(ConfigError, match="unknown stage"):
        select_stages(STAGES, "phase9", None)
    with pytest.raises(ConfigError, match="comes before"):
        select_stages(STAGES, "phase2", "sft")


def test_every_stage_writes_a_complete_manifest(full_run):
    cfg, events = full_run
    assert [s for s, k in events if k == "done"] == STAGES
    hashes = set()
    for name in STAGES:
        m = read_manifest(stage_dir(cfg, name))
        assert m["status"] == "complete" and m["config_hash"] == cfg.hash()
        assert set(m["data_hashes"]) == {"sft", "rl", "heldout/64", "heldout/160"}
        hashes.add(json.dumps(m["data_hashes"], sort_keys=True))
        if name != STAGE_EVAL:
            assert m["eval"]["n"] == 16 and set(m["eval"]["sets"]) == {"64", "160"}
    assert len(hashes) == 1
    assert read_manifest(stage_dir(cfg, "sft"))["metrics"]["sft/steps"] == 6
    init = read_manifest(stage_dir(cfg, "init"))["metrics"]
    assert init["copy/steps"] == 20 and 0.0 <= init["copy/acc"] <= 1.0 and init["copy/loss"] > 0
    copy_log = (stage_dir(cfg, "init") / "copy_pretrain" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in copy_log] == list(range(1, 21))
    assert init["recall/steps"] == 4 and 0.0 <= init["recall/value_acc"] <= 1.0 and init["recall/loss"] > 0
    recall_log = (stage_dir(cfg, "init") / "recall_pretrain" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in recall_log] == list(range(1, 5))
    p2 = read_manifest(stage_dir(cfg, "phase2"))
    assert p2["input_model"] == str(stage_dir(cfg, "phase1") / "final")
    assert p2["metrics"]["rl/steps"] == 2
    # the phase transition called the retrospective pool and logged its composition
    assert "retro/pool_size" in p2["curriculum"]["transition"]
    assert "retro/difficulty_hist" in p2["curriculum"]["transition"]
    assert [row[0] for row in table(cfg)] == ["init", "sft", "phase1", "phase2"]
    assert (stage_dir(cfg, STAGE_EVAL) / "table.md").is_file()
    depth = (stage_dir(cfg, STAGE_EVAL) / "depth.md").read_text()
    assert depth.startswith("| documents | evidence in | questions | init | sft | phase1 | phase2 |")
    behaviours = read_manifest(stage_dir(cfg, STAGE_EVAL))["metrics"]["behaviours"]
    assert [r["stage"] for r in behaviours] == ["init", "sft", "phase1", "phase2"]
    assert (stage_dir(cfg, STAGE_EVAL) / "behaviours.md").is_file()


def test_rerun_skips_completed_stages(full_run):
    cfg, _ = full_run
    before = {n: read_manifest(stage_dir(cfg, n))["finished"] for n in STAGES}
    events = run(cfg)
    assert events[:4] == [(n, "skip") for n in STAGES[:4]]
    assert {n: read_manifest(stage_dir(cfg, n))["finished"] for n in STAGES[:4]} == {n: before[n] for n in STAGES[:4]}


def test_changed_config_refuses_to_reuse_stages(full_run):
    cfg = copy.deepcopy(full_run[0])
    cfg.rl.optim.lr = cfg.rl.optim.lr * 2
    with pytest.raises(StageError, match="another config"):
        run(cfg)


def test_until_and_from_stage(tmp_path, full_run):
    cfg = quick_cfg(tmp_path / "run")
    assert [e for e in run(cfg, until_stage="sft") if e[1] == "done"] == [("init", "done"), ("sft", "done")]
    assert read_manifest(stage_dir(cfg, "phase1")) is None
    with pytest.raises(StageError, match="needs stage 'phase1' complete"):
        run(cfg, from_stage="phase2")
    events = run(cfg)
    assert ("sft", "skip") in events and ("phase2", "done") in events
    old_phase1 = read_manifest(stage_dir(cfg, "phase1"))["finished"]
    events = run(cfg, from_stage="phase1", until_stage="phase1")
    assert ("phase1", "done") in events and not any(s == "phase2" for s, _ in events)
    assert read_manifest(stage_dir(cfg, "phase1"))["finished"] != old_phase1
    assert read_manifest(stage_dir(cfg, "phase2")) is None  # discarded by --from-stage
    run(cfg)
    # same seed, same config: the same table as the uninterrupted run in another directory
    assert table(cfg) == table(full_run[0])


def test_resume_mid_phase_and_across_the_boundary_equals_uninterrupted(tmp_path, monkeypatch, full_run):
    """Kill inside phase1 (after its step-1 checkpoint), then right after phase1 trained (before its
    evaluation), then inside phase2; each re-run resumes. The final weights and the table equal the
    uninterrupted run's."""
    import longrl.train.rl as rl

    ref_cfg, _ = full_run
    cfg = quick_cfg(tmp_path / "run")
    real_step = rl.rl_step
    calls = {"n": 0}

    def dying_step(run_, step):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return real_step(run_, step)

    monkeypatch.setattr(rl, "rl_step", dying_step)
    kill_at = 2  # phase1 step 2: phase1 has a step-1 checkpoint
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert read_manifest(stage_dir(cfg, "phase1")) is None
    kill_at = -1
    import longrl.pipeline as pipeline

    real_finish = pipeline.Pipeline.finish

    def dying_finish(self, name, m, model, tokenizer):
        if name == "phase1":
            raise KeyboardInterrupt
        return real_finish(self, name, m, model, tokenizer)

    monkeypatch.setattr(pipeline.Pipeline, "finish", dying_finish)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert read_manifest(stage_dir(cfg, "phase1"))["status"] == "trained"
    monkeypatch.setattr(pipeline.Pipeline, "finish", real_finish)
    calls["n"], kill_at = 0, 2  # phase2 step 2 (phase1 is only evaluated, no steps)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert read_manifest(stage_dir(cfg, "phase1"))["status"] == "complete"
    kill_at = -1
    run(cfg)
    for stage in ("phase1", "phase2"):
        got, want = final_weights(cfg, stage), final_weights(ref_cfg, stage)
        assert all(torch.equal(got[k], want[k]) for k in want), stage
    assert table(cfg) == table(ref_cfg)


def test_tiny_tokenizer_keeps_its_normalizer_and_think_tokens(tmp_path):
    """A from-scratch policy's tokenizer, reloaded as the pipeline loads it: a paragraph-initial name is the
    same token as the name elsewhere (the normalizer survives saving; AutoTokenizer would drop it),
    the prompt template is made of words, and </think> survives decoding without special tokens."""
    from longrl.data.synth import generate
    from longrl.models import load_tokenizer
    from longrl.pipeline import build_policy_from_scratch
    from longrl.train.sft import init_tiny_model

    cfg = quick_cfg(tmp_path / "run")
    tok = load_tokenizer(str(build_policy_from_scratch(cfg, tmp_path / "init")))
    name = tok.tokenize(" Kalor")
    assert tok.tokenize("Kalor.\n\nKalor")[-len(name):] == name
    # `longrl sft --init-tiny` builds its policy the same way (one builder): the same normalizer
    init_tiny_model(str(tmp_path / "sft_init"), generate(8, 64, 0, ["lookup"], "sft"), hidden=32, layers=1)
    sft_tok = load_tokenizer(str(tmp_path / "sft_init"))
    name = sft_tok.tokenize(" Kalor")
    assert sft_tok.tokenize("Kalor.\n\nKalor")[-len(name):] == name
    assert len(tok.tokenize(" Please read the following text")) <= 8
    ids = tok.encode("<think>\nKalor\n</think>\n\nTherefore, the answer is Kalor.")
    assert "</think>" in tok.decode(ids, skip_special_tokens=True)


def test_stage_model_loads_print_no_progress_bar(tiny_model_dir, tmp_path, capfd):
    """The demo's console shows longrl's progress, not transformers' "Loading weights" bar per stage."""
    from transformers.utils import logging as hf_logging

    cfg = quick_cfg(tmp_path / "run")
    assert hf_logging.is_progress_bar_enabled()
    Pipeline(cfg, progress=False).load_model(str(tiny_model_dir), trainable=False)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()          # switched off only around the load


def test_eval_skip_leaves_named_stages_unevaluated(tmp_path):
    torch.set_num_threads(1)
    cfg = quick_cfg(tmp_path / "run", "pipeline.eval_skip=[init, phase1]", "curriculum.phases=[{name: phase1, "
                    "max_input_tokens: 200, steps: 1}, {name: phase2, max_input_tokens: 400, steps: 1}]")
    run(cfg)
    evaluated = {s: read_manifest(stage_dir(cfg, s))["eval"] is not None for s in ("init", "sft", "phase1", "phase2")}
    assert evaluated == {"init": False, "sft": True, "phase1": False, "phase2": True}
    assert not (stage_dir(cfg, "init") / "heldout_predictions.jsonl").exists()
    with pytest.raises(ConfigError, match="pipeline.eval_skip.*'phase9'"):
        Pipeline(quick_cfg(tmp_path / "bad", "pipeline.eval_skip=[phase9]"))
