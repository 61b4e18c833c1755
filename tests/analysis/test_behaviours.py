"""The rule-based behaviour counter on hand-written responses with counts known by construction, the
strict parser of the LLM-judge path, aggregation, the plot, and the CLI."""

from __future__ import annotations

import argparse
import json

import pytest

from longrl.analysis import behaviours_cli
from longrl.analysis.behaviours import (
    BEHAVIOURS,
    aggregate,
    count_behaviours,
    count_citations,
    markdown_table,
    parse_counts,
    plot_behaviours,
    reasoning_part,
    write_stage_report,
)

DOC = ("The river Lumen flows through the old town of Norwick before it reaches the sea. "
       "The bridge over the Lumen opened in 1921 after six years of work. Port Amber is the capital of Veridia.")

# Each response: (text, expected counts). The matched phrases are marked in the comments.
CASES = [
    (  # grounding: "according to the text", "the passage states" = 2; subgoal: "First," + "I need to find" = 2;
       # verification: "Let me verify" = 1; backtracking 0
        "<think>First, I need to find the opening year. According to the text, the bridge opened in 1921. "
        "The passage states it took six years. Let me verify: 1921 - 6 = 1915, fine.</think>\n"
        "Therefore, the answer is 1921.",
        {"grounding": 2, "subgoal": 2, "backtracking": 0, "verification": 1}),
    (  # backtracking: "Wait", "Actually,", "let me re-read" = 3; verification: "double-check", "This matches" = 2;
       # grounding: "as stated in the document" = 1; subgoal 0
        "<think>The capital is Norwick. Wait, that was a guess. Actually, let me re-read the question. "
        "As stated in the document, Port Amber is the capital. I will double-check the name. "
        "This matches the question.</think> Therefore, the answer is Port Amber.",
        {"grounding": 1, "subgoal": 0, "backtracking": 3, "verification": 2}),
    (  # nothing in the thinking; the behaviour words after </think> are not reasoning and do not count
        "<think>Port Amber.</think> Wait, according to the text, let me verify. Therefore, the answer is Port Amber.",
        {"grounding": 0, "subgoal": 0, "backtracking": 0, "verification": 0}),
    (  # no think block: the whole response is read. "hmm" = 1 backtracking; "Step 1" + "Step 2" = 2 subgoals;
       # "Awaited" and "verifiable-ish" words inside others do not count ("verif..." needs the listed forms)
        "Step 1: read. Step 2: answer. Hmm, awaited results. Therefore, the answer is 3.",
        {"grounding": 0, "subgoal": 2, "backtracking": 1, "verification": 0}),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_rule_counts_on_hand_written_responses(text, expected):
    assert count_behaviours(text) == expected


def test_citations_count_maximal_verbatim_runs():
    # one 11-word copied sentence (one run) + one 6-word copied span elsewhere = 2 citations; a 5-word copy
    # ("the capital of Veridia is" is not in the document in that order) does not count
    text = ("I read: the bridge over the Lumen opened in 1921 after six years. Then also Port Amber is the "
            "capital of Veridia, and Norwick is the capital of Veridia is wrong.")
    assert count_citations(text, DOC, ngram=6) == 2
    assert count_citations(text, DOC, ngram=30) == 0
    assert count_citations(text, "", ngram=6) == 0
    # with the document, grounding = phrase matches (1: "the text says") + citations (1)
    resp = "<think>The text says the bridge over the Lumen opened in 1921.</think> Therefore, the answer is 1921."
    assert count_behaviours(resp)["grounding"] == 1
    assert count_behaviours(resp, DOC)["grounding"] == 2


def test_reasoning_part():
    assert reasoning_part("<think>a</think>b</think>c") == "a</think>b"
    assert reasoning_part("no markers") == "no markers"


@pytest.mark.parametrize("text,expected", [
    ('Reasoning... {"grounding": 2, "subgoal": 1, "backtracking": 0, "verification": 3}',
     {"grounding": 2, "subgoal": 1, "backtracking": 0, "verification": 3}),
    ('{"grounding": 9, "subgoal": 9, "backtracking": 9, "verification": 9} then {"grounding": 1, "subgoal": 0, '
     '"backtracking": 0, "verification": 0}', {"grounding": 1, "subgoal": 0, "backtracking": 0, "verification": 0}),
    ('{"grounding": 2, "subgoal": 1, "backtracking": 0}', None),                       # a key missing
    ('{"grounding": 2, "subgoal": 1, "backtracking": 0, "verification": 1, "x": 1}', None),   # an extra key
    ('{"grounding": 2.0, "subgoal": 1, "backtracking": 0, "verification": 1}', None),  # not an integer
    ('{"grounding": true, "subgoal": 1, "backtracking": 0, "verification": 1}', None),  # bool is not a count
    ('{"grounding": -1, "subgoal": 1, "backtracking": 0, "verification": 1}', None),
    ('{"grounding": 5000, "subgoal": 1, "backtracking": 0, "verification": 1}', None),
    ("grounding: 2, subgoal: 1", None), ("", None), (None, None), ("{not json}", None),
])
def test_parse_counts_is_strict(text, expected):
    assert parse_counts(text) == expected


def test_aggregate_means_fractions_and_no_verdicts():
    c = dict.fromkeys(BEHAVIOURS, 0)
    rows = [{"stage": "sft", "counts": {**c, "grounding": 2}, "acc": 1.0},
            {"stage": "sft", "counts": {**c, "verification": 1}, "acc": 0.0},
            {"stage": "sft", "counts": None, "acc": 0.0},
            {"stage": "rl", "counts": {**c, "grounding": 1, "backtracking": 3}, "acc": 1.0}]
    sft, rl = aggregate(rows, ["stage"])
    assert (sft["stage"], sft["n"], sft["no_verdict"]) == ("sft", 2, 1)
    assert sft["grounding/mean"] == 1.0 and sft["grounding/frac"] == 0.5 and sft["verification/mean"] == 0.5
    assert sft["acc"] == pytest.approx(1 / 3)                  # accuracy over every response, judged or not
    assert rl["backtracking/mean"] == 3.0 and rl["backtracking/frac"] == 1.0
    table = markdown_table([sft, rl])
    assert "| sft | 2 (+1 no verdict) | 1.00 (50%) |" in table and "| rl | 1 |" in table


def _stage_dirs(tmp_path):
    """A pipeline-shaped run: held-out predictions for sft and two phases, rollout samples and metrics."""
    stages, phases = [], []
    texts = {"sft": "<think>Port Amber.</think> Therefore, the answer is Port Amber.",
             "phase1": "<think>First, I need to find the capital. Wait, check that. The text says Port Amber."
                       "</think> Therefore, the answer is Port Amber.",
             "phase2": "<think>Let me verify. According to the text, Port Amber. Hmm.</think> Therefore, the "
                       "answer is Port Amber."}
    for name, text in texts.items():
        d = tmp_path / name
        d.mkdir()
        (d / "heldout_predictions.jsonl").write_text(
            "".join(json.dumps({"set": "64", "id": f"q{i}", "response": text, "acc": float(i % 2)}) + "\n"
                    for i in range(4)))
        stages.append((name, d / "heldout_predictions.jsonl"))
        if name != "sft":
            (d / "rollout_samples.jsonl").write_text("".join(
                json.dumps({"step": s, "response": text, "acc": 1.0}) + "\n" for s in (1, 2) for _ in range(2)))
            (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/acc": 0.25 * s}) + "\n"
                                                     for s in (1, 2)))
            phases.append((name, d))
    return stages, phases


def test_stage_report_table_and_plot(tmp_path):
    stages, phases = _stage_dirs(tmp_path)
    rep = write_stage_report(stages, phases, tmp_path / "out", tmp_path / "out" / "behaviours.png")
    by = {r["stage"]: r for r in rep["per_stage"]}
    assert by["sft"]["grounding/mean"] == 0 and by["sft"]["n"] == 4
    assert (by["phase1"]["subgoal/mean"], by["phase1"]["backtracking/mean"], by["phase1"]["grounding/mean"]) == (2, 1, 1)
    assert by["phase1"]["verification/mean"] == 1                     # "check that"
    assert (by["phase2"]["verification/mean"], by["phase2"]["backtracking/mean"]) == (1, 1)
    per_step = json.loads((tmp_path / "out" / "behaviours.json").read_text())["per_step"]
    assert [(r["phase"], r["step"]) for r in per_step] == [("phase1", 1), ("phase1", 2), ("phase2", 1), ("phase2", 2)]
    png = tmp_path / "out" / "behaviours.png"
    assert rep["plot"] == str(png) and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert "| phase1 | 4 | 1.00 (100%) | 2.00 (100%) |" in rep["table"]


def test_stage_report_counts_citations_of_the_run_documents(tmp_path):
    from longrl.analysis.behaviours import run_documents

    stages, phases = _stage_dirs(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    doc = "Veridia is an island. The capital of Veridia is Port Amber by the sea."
    (data / "heldout_64.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "source": "s", "document": doc}) + "\n"
                                                   for i in range(4)))
    docs = run_documents(data)
    assert docs["64/q0"] == doc and len(docs) == 4
    rep = write_stage_report(stages[:1], [], tmp_path / "out", tmp_path / "out" / "b.png", docs)
    # the sft responses say "Port Amber." only: no 6-word citation, grounding 0 ...
    assert rep["per_stage"][0]["grounding/mean"] == 0 and rep["plot"] == ""
    sft = stages[0][1]
    sft.write_text(sft.read_text().replace("<think>Port Amber.", "<think>The capital of Veridia is Port Amber by."))
    rep = write_stage_report(stages[:1], [], tmp_path / "out", tmp_path / "out" / "b.png", docs)
    assert rep["per_stage"][0]["grounding/mean"] == 1                    # ... a copied 7-word span is one


def test_plot_without_metrics_uses_sample_accuracy(tmp_path):
    c = dict.fromkeys(BEHAVIOURS, 1)
    per_step = aggregate([{"phase": "p1", "step": s, "counts": c, "acc": 0.5} for s in (1, 2, 3)], ["phase", "step"])
    out = plot_behaviours(per_step, tmp_path / "b.png")
    assert out.is_file() and out.stat().st_size > 10_000


def _cli(argv):
    parser = argparse.ArgumentParser()
    behaviours_cli.add_arguments(parser)
    return behaviours_cli.run(parser.parse_args(argv))


def test_cli_rule_counter_labels_stages_by_folder(tmp_path, capsys):
    stages, phases = _stage_dirs(tmp_path)
    out = tmp_path / "beh"
    argv = ["--out", str(out)]
    for _, path in stages:
        argv += ["--in", str(path)]
    argv += ["--in", f"{phases[0][1] / 'rollout_samples.jsonl'}:rl-samples"]
    assert _cli(argv) == 0
    rows = [json.loads(line) for line in (out / "counts.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 4 + 4 and {r["stage"] for r in rows} == {"sft", "phase1", "phase2", "rl-samples"}
    assert all(set(r["counts"]) == set(BEHAVIOURS) for r in rows)
    assert (out / "behaviours.png").is_file()                     # the rl-samples rows carry steps
    assert "| phase2 |" in (out / "behaviours.md").read_text()
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["counter"] == "rules"


def test_cli_names_a_row_without_a_response(tmp_path):
    from longrl.data.records import RecordError

    bad = tmp_path / "x.jsonl"
    bad.write_text(json.dumps({"response": "ok"}) + "\n" + json.dumps({"text": "no response"}) + "\n")
    with pytest.raises(RecordError, match=r"x\.jsonl:2: field 'response'"):
        _cli(["--in", str(bad), "--out", str(tmp_path / "o")])
