"""Answer extraction: </think> split, last answer marker, cleaning."""

import pytest

from longrl.rewards.extract import answer_after_marker, clean_text, extract_answer, split_think


def test_split_think_uses_last_close_tag_and_drops_open_tag():
    thinking, final = split_think("<think>a</think> draft </think> final")
    # rpartition on the LAST </think>: everything before it is thinking.
    assert thinking == "a</think> draft"
    assert final == " final"


def test_split_think_without_close_tag_is_none_none():
    assert split_think("<think> never closed, the answer is 5") == (None, None)


def test_missing_think_is_format_failure_only_when_required():
    response = "Therefore, the answer is Paris."
    assert extract_answer(response, require_think=True) is None
    assert extract_answer(response, require_think=False) == "Paris"


def test_marker_inside_thinking_is_ignored():
    # the answer must come from after </think>; the draft answer inside thinking does not count
    assert extract_answer("<think>the answer is Rome</think> I am not sure.") is None


@pytest.mark.parametrize("final, expected", [
    ("Therefore, the answer is **Bob Dylan**.", "Bob Dylan"),
    ("THE ANSWER IS: Bob Dylan!", "Bob Dylan"),                       # case-insensitive, colon
    ('the answer is "Long Island".', "Long Island"),                   # wrapping quotes
    ("the answer is (a) (b)", "(a) (b)"),                             # two pairs, not one wrapper
    ("the answer is [[YES]]", "[[YES]]"),                              # square brackets kept
    ("the answer is (Long Island).", "Long Island"),                   # template parentheses echoed
    ("The correct answer is (B)", "B"),
    ("The final answer is \\boxed{42}.", "42"),
    ("x the answer is 1. y, so the answer is 2.", "2"),               # LAST marker
    ("the answer is Paris.\n\nI hope this helps!", "Paris"),          # cut at the first blank line
    ("the answer is *Paris*<|im_end|>", "Paris"),                     # emphasis and trailing special token
    ("the answer is Paris <|im_start|>user", "Paris <|im_start|>user"),  # inner special tokens kept
    ("the answer is Pa\u200bris", "Paris"),                            # zero-width space removed
    ("the answer is ＰＡＲＩＳ", "PARIS"),                               # full-width -> ASCII (NFKC)
    ("the answer is", ""),                                             # marker, nothing after it
])
def test_answer_after_marker(final, expected):
    assert extract_answer("<think>t</think>" + final) == expected


def test_boxed_is_a_fallback_without_marker():
    assert answer_after_marker("so \\boxed{3} then \\boxed{7}") == "7"
    assert answer_after_marker("no marker here") is None


def test_non_string_response_is_none():
    assert extract_answer(None) is None  # type: ignore[arg-type]


def test_clean_text_drops_bidi_controls():
    assert clean_text("a\u202eb\ufeffc") == "abc"
