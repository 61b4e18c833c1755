"""Re-running `longrl rl` on an existing run directory: the resume is announced, a config change that
alters the trajectory is refused (unless --allow-config-change, which prints what changed), a finished
run is reported with its real final metrics and left untouched; steps without an update are counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _tiny_rl_job import BASE, Score, make_samples
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.cli import main
from longrl.config import load_config
from longrl.curriculum.phases import PhaseSampler
from longrl.data.readers import write_jsonl
from longrl.train.rl import train_rl

CLI_BASE = [o for o in BASE if not o.startswith(("rl.steps", "save_every", "keep_checkpoints"))] + [
    "rl.steps=3", "save_every=1", "keep_checkpoints=5", "reward.overlong.enabled=false",
    "reward.require_think=false", "logging.tensorboard=true"]


def _config(tmp_path: Path, model_dir: Path) -> Path:
    data = tmp_path / "train.jsonl"
    write_jsonl(make_samples(), data)
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'out'}\nmodel: {{path: {model_dir}, device: cpu}}\n"
                   f"data: {{sources: [{{path: {data}}}]}}\n")
    return cfg


def _rl(cfg: Path, *extra: str) -> int:
    return main(["rl", "--config", str(cfg), *CLI_BASE, *extra])


def _snapshot(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def _interrupt_after(run: Path, step: int) -> None:
    """What a kill -9 after checkpoint ``step`` leaves: later checkpoints and final/ gone, logs kept."""
    for ckpt in (run / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    shutil.rmtree(run / "final")


def test_resume_is_announced_and_a_config_change_is_refused(tiny_model_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model_dir)
    run = tmp_path / "out" / "rl"
    assert _rl(cfg) == 0
    saved = (run / "config.yaml").read_text()
    assert "group_size: 4" in saved
    _interrupt_after(run, 2)
    capsys.readouterr()
    before = _snapshot(run)

    assert _rl(cfg, "rollout.group_size=8") == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    assert "'rollout.group_size'" in line and "4 -> 8" in line and "--allow-config-change" in line
    assert "command line (rollout.group_size=8)" in line
    assert _snapshot(run) == before and (run / "config.yaml").read_text() == saved

    assert _rl(cfg, "logging.rollout_samples_every=3") == 0  # logging: does not alter the trajectory
    captured = capsys.readouterr()
    assert f"resumed from step 2 (checkpoint {run / 'checkpoints' / 'step-00000002'})" in captured.err
    assert "logging.rollout_samples_every: 2 -> 3" in captured.err
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    _interrupt_after(run, 2)
    assert _rl(cfg, "logging.rollout_samples_every=3", "rollout.group_size=8", "--allow-config-change") == 0
    err = capsys.readouterr().err
    assert "rollout.group_size: 4 -> 8" in err and "resumed from step 2" in err
    assert "group_size: 8" in (run / "config.yaml").read_text()


def test_finished_run_is_reported_and_left_untouched(tiny_model_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model_dir)
    run = tmp_path / "out" / "rl"
    assert _rl(cfg) == 0
    first = capsys.readouterr().out
    done = next(x for x in first.splitlines() if x.startswith("RL done"))
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
    before = _snapshot(run)
    assert _rl(cfg) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "already complete" in x)
    assert line.startswith("RL already complete at step 3") and "nan" not in line
    assert f"reward {last['reward/mean']:.3f}" in line and f"acc {last['reward/acc']:.3f}" in line
    assert line.split(":", 1)[1] == done.split(":", 1)[1]  # the same summary as when it finished
    assert _snapshot(run) == before


def test_steps_without_an_informative_group_are_skipped_updates(tiny_model_dir, tmp_path):
    def constant(samples, responses):
        return [Score(1.0, 1.0, r) for r in responses]

    cfg = load_config(None, BASE + ["rl.steps=3", "save_every=0", "reward.overlong.enabled=false"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sampler = PhaseSampler(make_samples(), batch_size=cfg.rl.prompts_per_step, seed=cfg.seed)
    result = train_rl(model, tok, sampler, constant, cfg, run_dir=tmp_path)
    assert result.skipped_updates == 3
    hist = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["actor/skipped_updates"] for h in hist] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("key, harmless", [
    ("logging.progress", True), ("logging.tensorboard", True), ("save_every", True), ("keep_checkpoints", True),
    ("eval.k", True), ("rl.micro_token_budget", True), ("rollout.timeout_s", True), ("output_dir", True),
    ("rollout.group_size", False), ("rl.steps", False), ("rl.optim.lr", False), ("seed", False),
    ("model.path", False), ("algo.clip_high", False), ("reward.judge.model", False),
])
def test_harmless_config_keys(key, harmless):
    from longrl.train.checkpoint import is_harmless_change

    assert is_harmless_change(key) is harmless


def test_a_section_added_since_the_run_started_is_no_change_at_its_default(tmp_path):
    """A run saved before a config section existed (e.g. `agent`) resumes when that section is at its
    default; a non-default value there is still a change."""
    import yaml

    from longrl.config import Config, ConfigError
    from longrl.train.checkpoint import RUN_CONFIG, check_run_config

    new = Config().to_dict()
    saved = {k: v for k, v in new.items() if k != "agent"}
    (tmp_path / RUN_CONFIG).write_text(yaml.safe_dump(saved))
    assert check_run_config(tmp_path, new) == []
    changed = Config().to_dict()
    changed["agent"]["chunk_tokens"] = changed["agent"]["chunk_tokens"] + 1
    with pytest.raises(ConfigError, match="agent.chunk_tokens"):
        check_run_config(tmp_path, changed)
