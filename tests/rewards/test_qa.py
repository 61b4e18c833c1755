"""Document-QA metrics: LongBench normalisation, EM, F1, and both sub-EM modes."""

import json
from pathlib import Path

import pytest

from longrl.rewards.qa import exact_match, normalize_answer, sub_exact_match, token_f1

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "docqa_samples"


def test_normalize_answer():
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("U.S.A.") == "usa"


def test_exact_match_max_over_golds():
    assert exact_match("the University of Toronto", ["UT", "University of Toronto"])
    assert not exact_match("Toronto", ["University of Toronto"])


def test_token_f1_hand_computed():
    # pred tokens [bob, dylan, singer], gold [bob, dylan]: common 2, P = 2/3, R = 1, F1 = 0.8
    assert token_f1("Bob Dylan, singer", ["Bob Dylan"]) == pytest.approx(0.8)
    # max over golds: second gold matches exactly
    assert token_f1("UT", ["University of Toronto", "UT"]) == 1.0
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("x", []) == 0.0


def test_token_f1_has_no_yes_no_special_case():
    # LongBench's qa_f1_score: "yes they are" vs "yes" -> P = 1/3, R = 1, F1 = 0.5 (HotpotQA's script gives 0.5 too,
    # but "no" vs "no way" would be 0 there; LongBench gives 2/3).
    assert token_f1("no way", ["no"]) == pytest.approx(2 / 3)


def test_eval_sub_em_is_character_containment():
    assert sub_exact_match("London", ["on"], mode="eval")          # official: substring of characters
    assert sub_exact_match("Bob", ["Bob Dylan"], mode="eval")      # pred inside gold
    assert not sub_exact_match("the", ["Paris"], mode="eval")      # deliberate: empty normalised pred


def test_train_sub_em_whole_tokens_and_guards():
    assert sub_exact_match("Bob Dylan", ["bob dylan"])
    assert sub_exact_match("Bob Dylan, a member of the band", ["Bob Dylan"])   # 6 tokens <= 2*2+4
    assert not sub_exact_match("London", ["on"])                               # tokens, not characters
    assert not sub_exact_match("Bob", ["Bob Dylan"])                           # covers only half of the gold
    assert sub_exact_match("Nicholas Bacon", ["Sir Nicholas Bacon"])           # covers 2 of 3 tokens
    assert not sub_exact_match("University", ["University of Cambridge"])     # 1 of 3 tokens
    assert not sub_exact_match("George Harrison or Bob Dylan", ["Bob Dylan"])  # hedge with "or"
    assert not sub_exact_match("yes and no", ["no"])                           # both yes and no
    assert not sub_exact_match("Tom Petty, Bob Dylan, Roy Orbison", ["Bob Dylan"])  # candidate list
    assert sub_exact_match("Variational LSTM, CharCNN, RHN", ["Variational LSTM, CharCNN, RHN"])
    assert not sub_exact_match("Bob Dylan " + "la " * 20, ["Bob Dylan"])       # too long


def test_sub_em_rejects_unknown_mode():
    with pytest.raises(ValueError):
        sub_exact_match("a", ["a"], mode="strict")


def _records(name):
    with open(SAMPLES / f"longbench_{name}.jsonl") as f:
        return [json.loads(line) for line in f]


def test_real_longbench_predictions():
    # Real model outputs in _fixture_meta: LongBench-style raw continuations (the answer, then a
    # hallucinated next "Question:"), scored the way LongBench does, on the whole prediction.
    hotpot = {r["answers"][0]: r["_fixture_meta"]["example_model_prediction"] for r in _records("hotpotqa")}
    long_island = hotpot["Long Island"]
    assert long_island.startswith("Long Island\n")
    assert sub_exact_match(long_island, ["Long Island"], mode="eval")       # gold is a substring
    assert not sub_exact_match(long_island, ["Long Island"], mode="train")  # far longer than the gold
    assert not exact_match(long_island, ["Long Island"])
    assert 0 < token_f1(long_island, ["Long Island"]) < 0.5
    wrong = hotpot["Bob Dylan"]                                              # "George Harrison\n..."
    assert not sub_exact_match(wrong, ["Bob Dylan"], mode="eval")
    assert token_f1(wrong, ["Bob Dylan"]) == 0.0


def test_real_predictions_first_line_matches():
    # The first line of each hotpotqa prediction is the model's answer: wherever it is EM-correct,
    # train-mode sub-EM agrees, and EM implies eval-mode sub-EM and F1 = 1.
    for record in _records("hotpotqa") + _records("2wikimqa") + _records("musique"):
        first = record["_fixture_meta"]["example_model_prediction"].strip().split("\n")[0]
        golds = record["answers"]
        if exact_match(first, golds):
            assert sub_exact_match(first, golds) and sub_exact_match(first, golds, mode="eval")
            assert token_f1(first, golds) == 1.0
