"""`longrl prepare` end to end: the shared samples with the real Qwen tokenizer, skips, config."""

from __future__ import annotations

import json
import shutil

import pytest

from longrl.cli import main
from longrl.config import ConfigError
from longrl.data.prepare import parse_bounds, parse_source_arg
from longrl.data.readers import read_source


def test_prepare_shared_samples(shared_samples_dir, tmp_path, capsys):
    out = tmp_path / "prepared"
    rc = main(["prepare", "--source", str(shared_samples_dir), "--bounds", "4000,12000", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    for source in ("hotpotqa", "2wikimqa", "musique", "qasper", "frames", "<=4000", ">12000"):
        assert source in printed
    manifest = json.loads((out / "manifest.json").read_text())
    per_phase = [p["samples"] for p in manifest["phases"]]
    assert sum(per_phase) + manifest["overlong"]["samples"] == 98 and manifest["skipped"] == 0
    assert manifest["overlong"]["samples"] > 0 and all(n > 0 for n in per_phase)
    assert f"{manifest['overlong']['samples']} over-long" in printed
    lo = 0
    for k, hi in enumerate([4000, 12000], 1):
        phase = read_source(out / f"phase{k}.jsonl")
        assert len(phase) == per_phase[k - 1]
        assert all(lo < s.n_tokens <= hi for s in phase)
        lo = hi
    assert all(s.n_tokens > 12000 for s in read_source(out / "overlong.jsonl"))
    verl = read_source(out / "verl" / "all.parquet")
    assert len(verl) == sum(per_phase)
    assert {s.source for s in verl} >= {"frames", "qasper"}


def test_prepare_skips_are_counted_and_written(fixtures_dir, tmp_path, capsys):
    bad = tmp_path / "mixed.jsonl"
    bad.write_text((fixtures_dir / "plain.jsonl").read_text() + '{"document": "d", "question": "q?"}\n')
    out = tmp_path / "out"
    rc = main(["prepare", "--source", f"{bad}:jsonl", "--source", str(fixtures_dir / "docmath_testmini.json"),
               "--on-error", "skip", "--out", str(out), "--format", "parquet"])
    assert rc == 0
    assert "skipped 1 malformed record" in capsys.readouterr().out
    (skip,) = [json.loads(line) for line in (out / "skips.jsonl").read_text().splitlines()]
    assert (skip["file"], skip["where"], skip["field"]) == (str(bad), "line 4", "answer")
    assert len(read_source(out / "phase1.parquet")) == 5


def test_prepare_raise_names_file_and_line(fixtures_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"document": "d", "question": "q?", "answer": ""}\n')
    assert main(["prepare", "--source", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:line 1: field 'answer'" in capsys.readouterr().err


def test_prepare_from_config(fixtures_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fixtures_dir, data)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  sources:\n    - {{path: {data / 'plain.jsonl'}}}\n    - {{path: {data / 'frames_wiki.jsonl'}, "
                   f"format: frames}}\n  cache_dir: {tmp_path / 'cache'}\n"
                   "curriculum:\n  phases:\n    - {max_input_tokens: 100}\n    - {max_input_tokens: 2000}\n")
    out = tmp_path / "out"
    assert main(["prepare", "--config", str(cfg), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bounds"] == [100, 2000]
    assert sum(p["samples"] for p in manifest["phases"]) == 5
    assert (tmp_path / "cache" / "token_counts.sqlite").is_file()


@pytest.mark.parametrize(("arg", "path", "fmt"), [
    ("data/x.jsonl", "data/x.jsonl", "auto"),
    ("data/x.parquet:verl", "data/x.parquet", "verl"),
    ("C:/odd:name.jsonl", "C:/odd:name.jsonl", "auto"),
])
def test_parse_source_arg(arg, path, fmt):
    src = parse_source_arg(arg)
    assert (src.path, src.format) == (path, fmt)


@pytest.mark.parametrize("text", ["", "100,50", "a,b", "0,10"])
def test_parse_bounds_rejects(text):
    with pytest.raises(ConfigError, match="--bounds"):
        parse_bounds(text)


def test_prepare_without_sources_is_a_config_error(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path)]) == 2
    assert "no sources" in capsys.readouterr().err


def test_prepare_non_utf8_line_is_an_error_or_a_counted_skip(fixtures_dir, tmp_path, capsys):
    bad = tmp_path / "latin.jsonl"
    lines = (fixtures_dir / "plain.jsonl").read_bytes().splitlines()
    bad.write_bytes(b"\n".join([lines[0], '{"document": "caf\u00e9", "question": "q?", "answer": "a"}'.encode("latin-1"),
                                *lines[1:]]) + b"\n")
    assert main(["prepare", "--source", str(bad), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:line 2: field '<encoding>': not UTF-8") and "Traceback" not in err

    out = tmp_path / "o2"
    assert main(["prepare", "--source", str(bad), "--on-error", "skip", "--out", str(out)]) == 0
    assert "skipped 1 malformed record" in capsys.readouterr().out
    (skip,) = [json.loads(line) for line in (out / "skips.jsonl").read_text().splitlines()]
    assert (skip["where"], skip["field"]) == ("line 2", "<encoding>")
    assert json.loads((out / "manifest.json").read_text())["skipped"] == 1
