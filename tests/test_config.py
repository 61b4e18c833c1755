"""Config loading: defaults validate; bad keys, types and values fail naming the key and the file."""

import pytest

from longrl.cli import main
from longrl.config import Config, ConfigError, config_from_dict, load_config


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = load_config(None)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.hash() == cfg.hash()


def test_single_think_off_leaves_the_hash_of_older_runs_alone():
    """Run directories made before reward.single_think existed resume: off, the key is not hashed."""
    import hashlib
    import json

    cfg = load_config(None, ["pipeline.eval_skip=[init]"])
    data = cfg.to_dict()
    del data["reward"]["single_think"], data["distill"], data["verl"], data["agent"]
    for section in ("eval", "rollout", "rl"):
        del data[section]["autocast"]
    del data["pipeline"]["synthetic"]["haystack"], data["pipeline"]["synthetic"]["distractor_people"]
    older = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.hash() == older
    assert load_config(None, ["pipeline.eval_skip=[init]", "reward.single_think=true"]).hash() != older


@pytest.mark.parametrize("data, key, text", [
    ({"rl": {"stepz": 3}}, "rl.stepz", "unknown key"),
    ({"rl": {"steps": "many"}}, "rl.steps", "expected an integer"),
    ({"rl": {"optim": {"lr": True}}}, "rl.optim.lr", "expected a number"),
    ({"algo": {"clip_low": 0.3, "clip_high": 0.2}}, "algo.clip_high", "must be >= clip_low"),
    ({"algo": {"loss_agg": "sum"}}, "algo.loss_agg", "must be one of"),
    ({"rollout": {"group_size": 0}}, "rollout.group_size", "must be >= 1"),
    ({"data": {"max_input_tokens": -5}}, "data.max_input_tokens", "must be >= 0"),
    ({"curriculum": {"phases": [{"max_input_tokens": 60000}, {"max_input_tokens": 20000}]}},
     "curriculum.phases[1].max_input_tokens", "must increase"),
    ({"curriculum": {"phases": [{"max_input_tokens": -1}]}}, "curriculum.phases[0].max_input_tokens", "> 0"),
    ({"reward": {"judge": {"backend": "openai"}}}, "reward.judge.model", "is required"),
    ({"rollout": {"max_new_tokens": 500}}, "reward.overlong.buffer_tokens", "must be < rollout.max_new_tokens"),
    ({"rl": {"prompts_per_step": 6, "mini_batches": 4}}, "rl.mini_batches", "must divide"),
    ({"sft": {"sources": [{"weight": 1.0}]}}, "sft.sources[0].path", "is required"),
])
def test_bad_values_name_key_and_file(data, key, text):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, "my.yaml")
    assert e.value.key == key
    assert text in str(e.value) and "my.yaml" in str(e.value)


def test_overrides_and_nested_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("curriculum:\n  phases:\n    - {max_input_tokens: 20000, max_output_tokens: 12000}\n"
                    "    - {max_input_tokens: 60000}\n")
    cfg = load_config(path, ["rl.optim.lr=3e-6", "rollout.group_size=4"])
    assert isinstance(cfg, Config)
    assert cfg.rl.optim.lr == 3e-6 and cfg.rollout.group_size == 4
    assert [p.max_input_tokens for p in cfg.curriculum.phases] == [20000, 60000]
    assert cfg.curriculum.phases[0].max_output_tokens == 12000


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_config_show_and_error_exit(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("seed: 7\n")
    assert main(["config", "show", str(good)]) == 0
    assert "seed: 7" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: {clip_high: 0.1}\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "algo.clip_high" in err and str(bad) in err


@pytest.mark.parametrize("override, key", [
    ("foo=1", "foo"), ("rl.stepz=3", "rl.stepz"), ("rl.optim.lr=fast", "rl.optim.lr"),
    ("curriculum.phases=[{max_input_tokens: -1}]", "curriculum.phases[0].max_input_tokens"),
])
def test_bad_override_is_reported_as_coming_from_the_command_line(tmp_path, capsys, override, key):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("seed: 3\nrl: {steps: 5}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, [override])
    assert e.value.key == key
    assert "tiny.yaml" not in str(e.value) and f"command line ({override})" in str(e.value)
    assert main(["config", "check", str(cfg), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config key '{key}' given on the command line ({override}):"), err


def test_bad_file_key_still_names_the_file_when_overrides_are_given(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("rl: {stepz: 5}\n")
    with pytest.raises(ConfigError, match="tiny.yaml"):
        load_config(cfg, ["seed=1"])
