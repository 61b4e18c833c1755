"""Correct answers written the way reasoning models write them earn the rule reward; hedges do not.

The line between "answer plus a justification" and "a hedge listing candidates" (docs/rewards.md):
a prediction that starts with the gold may go on with ONE short clause (at most 8 words) that opens with
a justification word (as, according, because, per, based, ...), names no other candidate (no capitalised
word but its first and reference nouns such as Document or Passage) and has no hedge word (or, not, nor,
either, neither). Anything else is judged by the old guard: a list of 3+ items where the gold has fewer,
or alternatives, earn nothing.
"""

import pytest

from longrl.rewards import compute_score


def wrap(answer: str) -> str:
    return f"<think>Let me think.</think>\n\nTherefore, the answer is {answer}."


def score(source, response, gold):
    return compute_score(source, response, gold)["score"]


@pytest.mark.parametrize("response", [
    wrap(r"\boxed{Hollywood, Florida}"),
    wrap(r"$\boxed{Hollywood, Florida}$"),
    wrap(r"\(\boxed{Hollywood, Florida}\)"),
    wrap(r"\boxed{\text{Hollywood, Florida}}"),
    r"<think>x</think> So the city is $\boxed{Hollywood, Florida}$",
    r"<think>x</think> $$\boxed{\textbf{Hollywood, Florida}}$$",
    wrap("Hollywood, Florida, as stated in the second document"),
    wrap("Hollywood, Florida (according to Passage 2)"),
    wrap("Hollywood, Florida, which is where the band was formed"),
])
def test_entity_forms_are_credited(response):
    assert score("hotpotqa", response, "Hollywood, Florida") == 1.0


@pytest.mark.parametrize("answer, gold", [
    ("Yes, because the document says the film premiered in 1999, before the other one", "yes"),
    ("Yes. Both bands were formed in the United Kingdom", "yes"),
    ("No. The document says that the two bands were formed in different countries", "no"),
    ("No, they were not born in the same year", "no"),
    ("**Yes**", "yes"),
])
def test_yes_no_with_a_justification_is_credited(answer, gold):
    assert score("hotpotqa", wrap(answer), gold) == 1.0


@pytest.mark.parametrize("answer, gold", [
    ("Yes or no, depending on the reading", "yes"),
    ("Yes, but also no", "yes"),
    ("No, yes", "no"),
    ("Not yes", "yes"),
    ("Probably yes", "yes"),
    ("No", "yes"),
    ("Yes, " + "because it is so " * 20, "yes"),   # a justification is short
])
def test_yes_no_hedges_earn_nothing(answer, gold):
    assert score("hotpotqa", wrap(answer), gold) == 0.0


@pytest.mark.parametrize("source", ["hotpotqa", "docmath"])
@pytest.mark.parametrize("answer", ["45°", "45 degrees", "45 °", r"45^\circ", r"$45^{\circ}$"])
def test_degrees_are_credited(source, answer):
    assert score(source, wrap(answer), "45") == 1.0


@pytest.mark.parametrize("answer", [
    "Hollywood, Florida, Miami, Florida, or Orlando, Florida",          # candidates listed
    "Hollywood, Florida, as well as Miami and Orlando",                 # clause names other candidates
    "Hollywood, Florida, according to Jeff Lynne",                      # capitalised entity in the clause
    "hollywood, florida, as well as miami",                             # lower-case candidates
    "Hollywood, Florida, as the document suggests, maybe",              # doubt
    "Hollywood, Florida, or possibly Tampa",
    "Hollywood, Florida, not Tampa",
    "Hollywood, Florida, as stated in the second document which also mentions several other cities nearby",
    "Hollywood",                                                        # partial: the judge decides
    "Florida",
])
def test_hedges_and_partial_answers_earn_nothing(answer):
    assert score("hotpotqa", wrap(answer), "Hollywood, Florida") == 0.0


@pytest.mark.parametrize("answer", ["Dylan", "Bob", "Mr. Dylan"])
def test_a_surname_is_not_a_full_name(answer):
    assert score("hotpotqa", wrap(answer), "Bob Dylan") == 0.0
