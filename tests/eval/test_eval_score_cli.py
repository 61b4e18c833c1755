"""`longrl eval score`: malformed prediction files get the `error: FILE:line N:` contract of `prepare`
(file line numbers, blank lines counted), or `--on-error skip` with counts and a skips file."""

from __future__ import annotations

import json

from longrl.cli import main


def _row(i: int, **change) -> str:
    row = {"benchmark": "hotpotqa", "id": str(i), "response": "<think>.</think>Therefore, the answer is Bob Dylan",
           "answers": ["Bob Dylan"]}
    row.update(change)
    return json.dumps({k: v for k, v in row.items() if v is not ...})


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "pred.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _score(path, out, *extra) -> int:
    return main(["eval", "score", str(path), "--out", str(out), *extra])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return next(x for x in err.splitlines() if x.startswith("error: "))


def test_malformed_json_names_the_file_line(tmp_path, capsys):
    path = _write(tmp_path, [_row(0), "", '{"benchmark": "hotpotqa", "id": "2", "response": "x", "answers": [}'])
    assert _score(path, tmp_path / "s.jsonl") == 2
    assert _error_line(capsys).startswith(f"error: {path}:line 3: field '<json>': invalid JSON")
    assert not (tmp_path / "s.jsonl").exists()


def test_missing_answers_and_unknown_benchmark(tmp_path, capsys):
    path = _write(tmp_path, [_row(0), _row(1, answers=...)])
    assert _score(path, tmp_path / "s.jsonl") == 2
    assert _error_line(capsys) == f"error: {path}:line 2: field 'answers': missing"
    path = _write(tmp_path, [_row(0, benchmark="hotpot")])
    assert _score(path, tmp_path / "s.jsonl") == 2
    assert _error_line(capsys).startswith(f"error: {path}:line 1: field 'benchmark': unknown benchmark 'hotpot'")


def test_missing_file(tmp_path, capsys):
    assert _score(tmp_path / "nope.jsonl", tmp_path / "s.jsonl") == 2
    line = _error_line(capsys)
    assert str(tmp_path / "nope.jsonl") in line and "not found" in line


def test_skip_counts_and_scores_the_rest(tmp_path, capsys):
    path = _write(tmp_path, [_row(0), "{oops", _row(2, answers=[]), _row(3, response=7), _row(4)])
    out = tmp_path / "s.jsonl"
    assert _score(path, out, "--on-error", "skip") == 0
    err = capsys.readouterr().err
    assert "skipped 3 malformed line(s)" in err and str(path) in err
    scored = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == ["0", "4"] and all(r["metrics"] for r in scored)
    skips = [json.loads(x) for x in out.with_name("s.skips.jsonl").read_text().splitlines()]
    assert [(s["where"], s["field"]) for s in skips] == [("line 2", "<json>"), ("line 3", "answers"),
                                                          ("line 4", "response")]
