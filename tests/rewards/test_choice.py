"""Multiple-choice parsing."""

import pytest

from longrl.rewards.choice import choice_match, gold_choice, parse_choice


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B)", "B"), ("[C]", "C"), ("**D**", "D"),
    ("Option B", "B"), ("option (b)", "B"), ("B) Paris", "B"), ("(C) the second treaty", "C"),
    ("D. A dog", "D"),             # the article "A" in the option text is not option A
    ("I think B", "B"),            # the pronoun I is not an option
])
def test_parse_choice(text, letter):
    assert parse_choice(text) == letter


@pytest.mark.parametrize("text", ["", "A or C", "(A) and (B)", "Option A, Option B", "A, B, C, D",
                                  "a dog", "B) Paris, or (C)", "none of them", None, "B " * 600])
def test_parse_choice_none(text):
    assert parse_choice(text) is None


def test_gold_forms():
    assert gold_choice("The correct answer is (B)") == "B"
    assert gold_choice("Therefore, the answer is C.") == "C"
    assert gold_choice("(A)") == "A"


def test_choice_match():
    assert choice_match("(B) Paris", "The correct answer is (B)")
    assert not choice_match("(C)", "The correct answer is (B)")
    assert not choice_match("B or C", "B")
    assert not choice_match(None, "B")
