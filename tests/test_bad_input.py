"""Bad input on the command line, as a new user would give it: one `error:` line naming what and where,
exit status 2, and no work done (no output directory, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from longrl.cli import main

FIXTURES = Path(__file__).parent / "data" / "fixtures"


def _config(tmp_path: Path, model_path: str = "", **extra: str) -> Path:
    cfg = tmp_path / "c.yaml"
    lines = [f"output_dir: {tmp_path / 'run'}", f"model: {{path: '{model_path}', device: cpu}}",
             f"data: {{sources: [{{path: {FIXTURES / 'plain.jsonl'}}}]}}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _assert_clean_error(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    for needle in needles:
        assert needle in line, (needle, line)
    return line


MISSING = ["/nonexistent/models/policy", "./no-such-model", "../no/such/model", "runs/never/made/final",
           "no-such-dir/model.gguf"]


@pytest.mark.parametrize("missing", MISSING)
@pytest.mark.parametrize("command", ["sft", "rl"])
def test_missing_model_path_fails_before_any_work(tmp_path, capsys, command, missing):
    cfg = _config(tmp_path, missing)
    assert main([command, "--config", str(cfg)]) == 2
    _assert_clean_error(capsys, "config key 'model.path'", f"{missing} does not exist", str(cfg))
    assert not (tmp_path / "run").exists()


def test_missing_model_path_from_the_command_line_says_so(tmp_path, capsys):
    cfg = _config(tmp_path, "")
    assert main(["rl", "--config", str(cfg), "model.path=/nonexistent/policy"]) == 2
    line = _assert_clean_error(capsys, "'model.path'", "/nonexistent/policy does not exist", "command line")
    assert str(cfg) not in line


def test_missing_tokenizer_path(tmp_path, capsys, tiny_model_dir):
    cfg = _config(tmp_path, str(tiny_model_dir))
    assert main(["rl", "--config", str(cfg), f"model.tokenizer={tmp_path / 'no-tokenizer'}"]) == 2
    _assert_clean_error(capsys, "'model.tokenizer'", "does not exist")


def test_pipeline_missing_model_path(tmp_path, capsys):
    cfg = _config(tmp_path, "/nonexistent/policy")
    assert main(["pipeline", str(cfg)]) == 2
    _assert_clean_error(capsys, "'model.path'", "/nonexistent/policy does not exist")
    assert not (tmp_path / "run").exists()


def test_demo_missing_model(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "run"), "--model", "/nonexistent/m.gguf"]) == 2
    _assert_clean_error(capsys, "/nonexistent/m.gguf does not exist")
    assert not (tmp_path / "run").exists()


def test_eval_missing_model_path(tmp_path, capsys, shared_samples_dir):
    assert main(["eval", "--benchmarks", "hotpotqa", "--data-dir", str(shared_samples_dir), "--model-path",
                 "/nonexistent/policy", "--out", str(tmp_path / "ev")]) == 2
    _assert_clean_error(capsys, "'--model-path'", "/nonexistent/policy does not exist")
    assert not (tmp_path / "ev").exists()


def test_prepare_missing_tokenizer(tmp_path, capsys):
    assert main(["prepare", "--source", str(FIXTURES / "plain.jsonl"), "--tokenizer", "./no/tokenizer",
                 "--out", str(tmp_path / "p")]) == 2
    _assert_clean_error(capsys, "'--tokenizer'", "./no/tokenizer does not exist")
    assert not (tmp_path / "p").exists()


def test_synth_missing_tokenizer(tmp_path, capsys):
    assert main(["synth", "--n", "2", "--tokens", "50", "--tokenizer", "/no/tok", "--out", str(tmp_path / "s.jsonl")]) == 2
    _assert_clean_error(capsys, "'--tokenizer'", "/no/tok does not exist")


def test_existing_directory_that_is_no_model(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = _config(tmp_path, str(empty))
    assert main(["rl", "--config", str(cfg)]) == 2
    _assert_clean_error(capsys, "'model.path'", "no config.json")


def test_location_rules(tmp_path, monkeypatch):
    """Hub-id-shaped names that are not local paths pass (the hub may have them), unless offline with
    nothing in the hub cache; clear filesystem paths must exist."""
    from huggingface_hub import constants

    from longrl.config import ConfigError
    from longrl.locations import check_location

    for hub_id in ("Qwen/Qwen2.5-7B-Instruct", "gpt2", "runs/x"):
        check_location(hub_id, "model.path")
    for path in MISSING + ["C:\\models\\x", "~/models/x", "a/b/c"]:
        with pytest.raises(ConfigError, match="does not exist"):
            check_location(path, "model.path")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
        check_location("Qwen/Qwen2.5-7B-Instruct", "model.path")
    check_location("", "model.path")  # empty: the caller decides (e.g. the pipeline builds a model)


@pytest.mark.parametrize("args, needle", [
    (["--tokens", "-5"], "'--tokens': must be >= 1, got -5"),
    (["--tokens", "100", "0"], "'--tokens': must be >= 1, got 0"),
    (["--n", "0"], "'--n': must be >= 1, got 0"),
    (["--families", "lookup,riddles"], "'--families': unknown question family 'riddles'"),
    (["--families", ","], "'--families': no question family given"),
])
def test_synth_arguments_are_validated_up_front(tmp_path, capsys, args, needle):
    out = tmp_path / "s.jsonl"
    assert main(["synth", "--out", str(out), *args]) == 2
    _assert_clean_error(capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("content", [None, "model: [unclosed\n"])
def test_demo_with_a_missing_or_broken_config_file_is_one_line(tmp_path, capsys, content):
    cfg = tmp_path / "recipe.yaml"
    if content is not None:
        cfg.write_text(content)
    assert main(["demo", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    _assert_clean_error(capsys, str(cfg), "file not found" if content is None else "invalid YAML")
    assert not (tmp_path / "run").exists()
