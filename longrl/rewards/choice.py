"""Multiple-choice answers: which option letter (A-H; "I" is too often the pronoun) an answer names.

Accepted: a bare letter ("B", "(B)", "B.", "B)", "[B]", "B:"), a letter opening the option text
("B) Paris", "(B) Paris", "B. Paris", "B: Paris"), and explicit mentions anywhere ("Option B",
"choice (b)", "(B)"). Lower-case letters count only in parentheses or after
option/choice, so the article "a" in "a dog" is not option A; after a leading letter, only
bracketed, "X)"/"X." or option/choice mentions count. An answer naming two or more distinct options ("A or C",
"(A) and (B)", "Option A, Option B") names none.
"""

from __future__ import annotations

import re

from longrl.rewards.extract import answer_after_marker, clean_text

MAX_CHOICE_TEXT = 1000
"""Longer answers name no option (a pasted list of all options is not an answer)."""

_BARE_RE = re.compile(r"[(\[]?([A-H])[)\].:]?")
_LEADING_RE = re.compile(r"(?:\(([A-Ha-h])\)|\[([A-Ha-h])\]|([A-H])[).:])\s+\S")
_EXPLICIT_RES = (
    re.compile(r"\(([A-Ha-h])\)"),
    re.compile(r"\b(?:option|choice)\s*:?\s*\(?([A-Ha-h])\b", re.IGNORECASE),
    re.compile(r"(?:^|[\s,;/])([A-H])[).](?=\s|$)"),
)
_STANDALONE_RE = re.compile(r"(?:^|[\s,;/])([A-H])(?=$|[\s,;/.:)])")


def _letters(text: str, patterns: tuple[re.Pattern, ...]) -> set[str]:
    return {m.group(1).upper() for pattern in patterns for m in pattern.finditer(text)}


def parse_choice(text: str | None) -> str | None:
    """The single option letter that text names (upper case), or None when it names none or several."""
    if not isinstance(text, str):
        return None
    text = clean_text(text).replace("*", "").strip()
    if not text or len(text) > MAX_CHOICE_TEXT:
        return None
    bare = _BARE_RE.fullmatch(text)
    if bare:
        return bare.group(1)
    leading = _LEADING_RE.match(text)
    if leading:
        letters = {next(g for g in leading.groups() if g).upper()} | _letters(text, _EXPLICIT_RES)
    else:
        letters = _letters(text, (*_EXPLICIT_RES, _STANDALONE_RE))
    return letters.pop() if len(letters) == 1 else None


def gold_choice(gold: str) -> str | None:
    """The option letter of a gold answer: "B", "(B)", or "The correct answer is (B)"."""
    marked = answer_after_marker(gold)
    return parse_choice(marked if marked is not None else gold)


def choice_match(pred: str | None, gold: str) -> bool:
    """The prediction names exactly one option and it is the gold's."""
    p = parse_choice(pred)
    return p is not None and p == gold_choice(gold)
