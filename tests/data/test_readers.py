"""Readers on real-format records (shared LongBench/FRAMES samples, hand-written fixtures for the
rest), malformed-record errors and skips, and writer round trips."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from longrl.data.readers import (
    SkipLog,
    detect_format,
    looks_multiple_choice,
    read_docmath,
    read_frames,
    read_jsonl_samples,
    read_longbench_jsonl,
    read_plain_jsonl,
    read_source,
    read_verl_parquet,
    split_user_prompt,
    write_jsonl,
    write_verl_parquet,
)
from longrl.data.records import RecordError


def test_longbench_shared_samples(shared_samples_dir):
    samples = read_longbench_jsonl(shared_samples_dir / "longbench_musique.jsonl")
    assert len(samples) == 7
    first = samples[0]
    assert (first.source, first.task) == ("musique", "qa")
    assert first.question == "The author of Elizabeth and After attended which university?"
    assert first.answers == ["University of Toronto", "UT"]
    assert first.document.startswith("Passage 1:\nGuy Gaunt")
    assert first.metadata["language"] == "en"
    assert len({s.id for s in samples}) == 7


def test_auto_detects_every_shared_file(shared_samples_dir):
    skips = SkipLog()
    samples = read_source(shared_samples_dir, on_error="skip", skips=skips)
    counts = {src: sum(s.source == src for s in samples)
              for src in ("hotpotqa", "2wikimqa", "musique", "narrativeqa", "qasper", "frames")}
    assert counts == {"hotpotqa": 13, "2wikimqa": 13, "musique": 7, "narrativeqa": 6, "qasper": 9, "frames": 50}
    assert len(skips) == 0


def test_frames_questions_only_variant(shared_samples_dir):
    samples = read_frames(shared_samples_dir / "frames_50.jsonl")
    assert len(samples) == 50
    s = samples[0]
    assert (s.id, s.source, s.task, s.document) == ("0", "frames", "qa", "")
    assert s.answers == ["Jane Ballou"]
    assert "James_Buchanan" in s.metadata["wiki_links"]


def test_frames_with_wiki_items(fixtures_dir):
    a, b = read_frames(fixtures_dir / "frames_wiki.jsonl")
    assert a.id == "3" and a.answers == ["3"]
    assert a.document == ("Eiffel Tower\nThe Eiffel Tower was completed in 1889 for the World's Fair.\n\n"
                          "Statue of Liberty\nThe Statue of Liberty was dedicated on October 28, 1886.")
    assert b.document.startswith("The 1992 Summer Olympics were held in Barcelona")
    assert a.metadata["reasoning_types"] == "Numerical reasoning | Temporal reasoning"


def test_docmath_paragraphs_and_tables(fixtures_dir):
    a, b = read_docmath(fixtures_dir / "docmath_testmini.json")
    assert (a.id, a.source, a.task, a.answers) == ("complong-testmini-0", "docmath", "numeric", ["25.0"])
    assert "| Net revenue | 1,250.0 | 1,000.0 |" in a.document
    assert a.metadata["table_evidence"] == [2]
    # the separate `tables` list is appended after the paragraphs
    assert b.document.endswith("| total exposure | 716 |")
    assert b.answers == ["0.2932960893854749"]


def test_verl_docqa_rl_rows(fixtures_dir):
    math, mcq, hop = read_verl_parquet(fixtures_dir / "docqa_rl_verl.parquet")
    assert [s.task for s in (math, mcq, hop)] == ["numeric", "mcq", "qa"]
    assert mcq.source == "long_toc_choices_0_20000"
    assert math.answers == ["Therefore, the answer is 25"]
    assert mcq.question.endswith("D. Nobody") and mcq.document.startswith("Section 2.")
    assert hop.id == "2" and hop.metadata["input_length"] == 47


def test_plain_jsonl(fixtures_dir):
    p1, p2, p3 = read_plain_jsonl(fixtures_dir / "plain.jsonl")
    assert (p1.source, p1.task, p1.answers) == ("plain", "qa", ["Ada Brook"])
    assert (p2.source, p2.task, p2.answers, p2.metadata) == ("ore_reports", "numeric", ["95", "95 tonnes"],
                                                            {"split": "dev"})
    assert p3.task == "mcq"


@pytest.mark.parametrize(("name", "fmt"), [("docmath_testmini.json", "docmath"), ("frames_wiki.jsonl", "frames"),
                                           ("plain.jsonl", "jsonl"), ("docqa_rl_verl.parquet", "verl")])
def test_detect_format(fixtures_dir, name, fmt):
    assert detect_format(fixtures_dir / name) == fmt


def test_longbench_all_classes_is_mcq(tmp_path):
    rec = {"input": "Which class?", "context": "doc", "answers": ["Location"], "dataset": "trec",
           "all_classes": ["Location", "Person"], "_id": "x1"}
    (tmp_path / "trec.jsonl").write_text(json.dumps(rec) + "\n")
    (s,) = read_longbench_jsonl(tmp_path / "trec.jsonl")
    assert (s.id, s.task) == ("x1", "mcq")


@pytest.mark.parametrize(("question", "expected"), [
    ("Pick one:\n(A) red\n(B) blue", True),
    ("Pick one:\nA. red\nB. blue\nC. green", True),
    ("Which option did the committee call (A)?", False),
    ("What did Plan B. Smith say?", False),
])
def test_looks_multiple_choice(question, expected):
    assert looks_multiple_choice(question) is expected


GOOD = {"document": "d", "question": "q?", "answer": "a"}


@pytest.mark.parametrize(("line2", "field"), [
    ("{not json", "<json>"),
    (json.dumps({"document": "d", "question": "q?"}), "answer"),
    (json.dumps({"document": "d", "question": "   ", "answer": "a"}), "question"),
    (json.dumps({"document": "d", "question": "q?", "answers": []}), "answers"),
    (json.dumps({"document": "d", "question": "q?", "answers": ["a", None]}), "answers[1]"),
    (json.dumps({"document": 7, "question": "q?", "answer": "a"}), "document"),
    (json.dumps({**GOOD, "task": "essay"}), "task"),
    (json.dumps([1, 2]), "<record>"),
    (json.dumps({**GOOD, "id": "bad-1"}), "id"),  # line 1 got the default id "bad-1"
])
def test_malformed_record_names_file_line_field(tmp_path, line2, field):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line2 + "\n")
    with pytest.raises(RecordError) as err:
        read_plain_jsonl(path)
    assert (err.value.path, err.value.where, err.value.field_name) == (str(path), "line 2", field)
    assert str(path) in str(err.value)


def test_verl_row_errors_name_the_row(tmp_path, fixtures_dir):
    rows = pq.read_table(fixtures_dir / "docqa_rl_verl.parquet").to_pylist()
    rows[1]["prompt"] = [{"role": "user", "content": "Answer briefly: who pays?"}]
    path = tmp_path / "bad.parquet"
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(RecordError) as err:
        read_verl_parquet(path)
    assert (err.value.where, err.value.field_name) == ("row 2", "prompt")


def test_docmath_bad_paragraphs_names_item(tmp_path):
    path = tmp_path / "dm.json"
    path.write_text(json.dumps([{"question_id": "a", "question": "q?", "paragraphs": "text", "ground_truth": 1}]))
    with pytest.raises(RecordError) as err:
        read_docmath(path)
    assert (err.value.where, err.value.field_name) == ("item 1", "paragraphs")


def test_skip_mode_counts_and_reports(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [GOOD, "{oops", {"document": "d", "question": "q?"}, {**GOOD, "id": "x"}, {**GOOD, "id": "y"}]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    skips = SkipLog()
    samples = read_plain_jsonl(path, on_error="skip", skips=skips)
    assert [s.id for s in samples] == ["mixed-1", "x", "y"]
    assert len(skips) == 2 and skips.counts_by_file() == {str(path): 2}
    assert [(r["where"], r["field"]) for r in skips.to_rows()] == [("line 2", "<json>"), ("line 3", "answer")]


def test_skip_needs_a_log(fixtures_dir):
    with pytest.raises(ValueError, match="SkipLog"):
        read_plain_jsonl(fixtures_dir / "plain.jsonl", on_error="skip")


def test_missing_file_is_a_record_error(tmp_path):
    with pytest.raises(RecordError, match="not found"):
        read_source(tmp_path / "nope.jsonl")


def test_jsonl_round_trip(fixtures_dir, tmp_path):
    samples = read_docmath(fixtures_dir / "docmath_testmini.json")
    samples[0].n_tokens = 321
    write_jsonl(samples, tmp_path / "out.jsonl")
    assert read_jsonl_samples(tmp_path / "out.jsonl") == samples


def test_verl_export_schema_and_round_trip(fixtures_dir, shared_samples_dir, tmp_path):
    samples = read_plain_jsonl(fixtures_dir / "plain.jsonl") + read_docmath(fixtures_dir / "docmath_testmini.json")
    samples += read_longbench_jsonl(shared_samples_dir / "longbench_qasper.jsonl")[:2]
    path = tmp_path / "verl.parquet"
    write_verl_parquet(samples, path)
    table = pq.read_table(path)
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    row = table.to_pylist()[1]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "95"}
    assert row["prompt"][0]["role"] == "user"
    assert split_user_prompt(row["prompt"][0]["content"]) == (samples[1].document, samples[1].question)
    back = read_verl_parquet(path)
    # documents and questions are stored stripped, as the template renders them
    for s in samples:
        s.document, s.question = s.document.strip(), s.question.strip()
    assert back == samples


def _latin1_file(tmp_path, bad_first: bool = False):
    """A jsonl file whose second (or first) line is Latin-1, not UTF-8 ('café' as byte 0xE9)."""
    bad = json.dumps({**GOOD, "id": "latin"}, ensure_ascii=False).replace("d", "caf\u00e9", 1).encode("latin-1")
    good = [json.dumps({**GOOD, "id": f"g{i}"}).encode() for i in range(2)]
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b"\n".join([bad, *good] if bad_first else [good[0], bad, good[1]]) + b"\n")
    return path


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = _latin1_file(tmp_path)
    with pytest.raises(RecordError) as err:
        read_plain_jsonl(path)
    assert (err.value.where, err.value.field_name) == ("line 2", "<encoding>")
    assert "not UTF-8" in str(err.value) and "0xe9" in str(err.value)


@pytest.mark.parametrize("bad_first", [False, True])
def test_non_utf8_line_is_a_counted_skip(tmp_path, bad_first):
    path = _latin1_file(tmp_path, bad_first)
    skips = SkipLog()
    samples = read_source(path, on_error="skip", skips=skips)  # auto: detection looks past the bad line
    assert [s.id for s in samples] == ["g0", "g1"]
    assert [(r["where"], r["field"]) for r in skips.to_rows()] == [("line 1" if bad_first else "line 2", "<encoding>")]


def test_non_utf8_json_array_names_the_line(tmp_path):
    path = tmp_path / "dm.json"
    path.write_bytes(b'[\n{"question_id": "a",\n "question": "caf\xe9?"}\n]\n')
    with pytest.raises(RecordError) as err:
        read_docmath(path)
    assert (err.value.where, err.value.field_name) == ("line 3", "<encoding>")


def test_line_numbers_are_newline_counts(tmp_path):
    """A U+2028 inside a JSON string is not a line break (str.splitlines would split the record)."""
    path = tmp_path / "ls.jsonl"
    rec = {**GOOD, "document": "one\u2028two"}
    path.write_text(json.dumps(rec, ensure_ascii=False) + "\n" + json.dumps({"document": "d", "question": "q?"}) + "\n",
                    encoding="utf-8")
    assert read_plain_jsonl(path, on_error="skip", skips=(skips := SkipLog()))[0].document == "one\u2028two"
    assert [r["where"] for r in skips.to_rows()] == ["line 2"]
