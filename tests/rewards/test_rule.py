"""Rule reward: dispatch, ground-truth forms, format failures, and the verl entry point."""

import pytest

from longrl.data.records import task_for_source
from longrl.rewards import compute_score
from longrl.rewards.rule import parse_ground_truth, rule_score


def resp(answer: str) -> str:
    return f"<think>reasoning</think>\n\nTherefore, the answer is {answer}."


@pytest.mark.parametrize("source, task", [
    ("docmath_qa", "numeric"), ("DocMath", "numeric"), ("long_toc_choices_0_20000", "mcq"),
    ("synthetic_mcq", "mcq"), ("multihoprag", "qa"), ("hotpotqa", "qa"),
])
def test_task_for_source(source, task):
    assert task_for_source(source) == task


@pytest.mark.parametrize("gt, golds", [
    ("Paris", ["Paris"]),
    ("Therefore, the answer is 12.5.", ["12.5"]),
    ("The correct answer is (B)", ["B"]),
    (["UT", "University of Toronto"], ["UT", "University of Toronto"]),
    ('["a", "b"]', ["a", "b"]),
    (12.5, ["12.5"]),
    (("x",), ["x"]),
])
def test_parse_ground_truth(gt, golds):
    assert parse_ground_truth(gt) == golds


def test_parse_ground_truth_rejects_unknown_type():
    with pytest.raises(TypeError):
        parse_ground_truth(object())


def test_format_failures():
    r = rule_score("qa", "Therefore, the answer is Paris.", ["Paris"])
    assert (r.score, r.format_ok, r.pred, r.reason) == (0.0, False, None, "no </think>")
    r = rule_score("qa", "<think>x</think> Paris", ["Paris"])
    assert (r.score, r.format_ok, r.reason) == (0.0, False, "no answer")
    # evaluation of a non-reasoning model: no </think> required
    assert rule_score("qa", "Therefore, the answer is Paris.", ["Paris"], require_think=False).acc


def test_single_think_fails_a_response_that_closes_its_thinking_twice():
    looped = resp("Paris") + "\n</think>\nTherefore, the answer is Paris."      # the phase-2 drift of make demo-real
    assert rule_score("qa", looped, ["Paris"]).acc                              # off (default): the last answer counts
    r = rule_score("qa", looped, ["Paris"], single_think=True)
    assert (r.score, r.acc, r.pred, r.format_ok, r.reason) == (0.0, False, None, False, "repeated </think>")
    assert rule_score("qa", resp("Paris"), ["Paris"], single_think=True).acc   # one </think>: scored as usual
    assert rule_score("qa", "Therefore, the answer is Paris.", ["Paris"], single_think=True).reason == "no </think>"


def test_each_task_scores():
    assert rule_score("qa", resp("the University of Toronto"), ["UT", "University of Toronto"]).score == 1.0
    assert rule_score("numeric", resp("$1,234 million"), ["1234"]).score == 1.0
    assert rule_score("numeric", resp("-1,234"), ["1234"]).score == 0.0
    assert rule_score("mcq", "<think>x</think> The correct answer is (B)", ["B"]).score == 1.0
    r = rule_score("qa", resp("Rome"), ["Paris"])
    assert (r.score, r.acc, r.pred, r.format_ok, r.reason) == (0.0, False, "Rome", True, "no match")


def test_degenerate_answer_reason():
    r = rule_score("qa", resp("of the"), ["the Beatles"])  # normalises to "of": a stopword
    assert r.score == 0.0 and r.reason == "degenerate: stopwords only" and r.format_ok
    assert rule_score("qa", resp("the"), ["the Beatles"]).reason == "degenerate: no content"


def test_bad_task_or_no_gold_raises():
    with pytest.raises(ValueError):
        rule_score("essay", resp("x"), ["x"])
    with pytest.raises(ValueError):
        rule_score("qa", resp("x"), [])


def test_compute_score_verl_signature():
    out = compute_score("docmath_test", resp("12.5%"), "Therefore, the answer is 0.125.")
    assert out == {"score": 1.0, "acc": True, "pred": "12.5%", "format_ok": True}
    out = compute_score("long_toc_choices", "<think>x</think> The correct answer is (C)",
                        "The correct answer is (B)", extra_info={"index": 3})
    assert out["score"] == 0.0 and out["pred"] == "C" and out["acc"] is False
    out = compute_score("hotpotqa", resp("Who recorded it in 1990"), ["Bob Dylan"],
                        extra_info={"question": "Who recorded it in 1990?"})
    assert out["score"] == 0.0
    assert isinstance(compute_score("musique", "no think", "x")["score"], float)


def test_compute_score_reads_longrl_verl_export_extra_info():
    from longrl.rewards import compute_score

    response = "<think>t</think> Therefore, the answer is UT."
    # ground_truth holds only the first answer; extra_info carries them all (our verl export).
    assert compute_score("musique", response, "University of Toronto")["acc"] is False
    info = {"answers": ["University of Toronto", "UT"]}
    assert compute_score("musique", response, "University of Toronto", info)["acc"] is True
    # extra_info["task"] overrides the data_source dispatch (a 'synthetic' source with mcq samples).
    mcq = "<think>t</think> Therefore, the answer is (B)."
    assert compute_score("synthetic", mcq, "B", {"task": "mcq"})["acc"] is True
    # the question travels in extra_info, so echoing it back earns nothing
    q = "Which university did the author attend?"
    echo = f"<think>t</think> Therefore, the answer is {q}"
    assert compute_score("musique", echo, q, {"question": q})["score"] == 0.0
