"""Answer extraction from a model response.

A response is ``<think> reasoning </think> final text``. The final text is everything after the
LAST ``</think>``; the answer is what follows the LAST answer marker in it ("the answer is",
"the final answer is", "the correct answer is", case-insensitive, optional colon), cut at the first
blank line, with markdown emphasis, a ``\\boxed{}`` wrapper, a pair of wrapping quotes or brackets
(the template's "(insert answer here)" echoed literally) and trailing punctuation removed. When the
final text has no marker, the content of its last ``\\boxed{...}`` is used. LaTeX the models wrap
answers in is removed too: math delimiters (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``),
``\\text{}``-style wrappers inside a box, and degree signs (``^\\circ`` -> ``°``).

Model output is untrusted: nothing here raises on a string, and the work is linear in its length.
"""

from __future__ import annotations

import re
import unicodedata

THINK_END = "</think>"
THINK_START = "<think>"
MAX_UNWRAP = 4
"""Wrapper layers removed at most (e.g. **"(Paris)"**); bounds the work on adversarial nesting."""

_MARKER_RE = re.compile(r"\bthe\s+(?:final\s+|correct\s+)?answer\s+is\b\s*:?", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")  # one level of nested braces
_LATEX_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DEGREE_RE = re.compile(r"\s*\^\s*\{?\s*\\circ\s*\}?")
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_TRAILING_SPECIAL_RE = re.compile(r"(?:\s*<\|[^|<>]{1,40}\|>)+\s*$")  # after NFKC, "<｜end▁of▁sentence｜>" has ASCII bars
_EMPHASIS_RE = re.compile(r"\*\*|__|`")
_WRAP_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "(": ")", "*": "*", "_": "_"}
# Square brackets are kept: unwrapping "[[YES]]" would hide a judge verdict marker from later checks.
_TRAILING_PUNCT = " \t\n.,;:!?。，；：！？"


def split_think(response: str) -> tuple[str | None, str | None]:
    """Split a response into (thinking, final text).

    thinking is the text before the last ``</think>`` without a leading ``<think>``; final text is
    the text after it. Both are None when the response has no ``</think>``.
    """
    head, sep, tail = response.rpartition(THINK_END)
    if not sep:
        return None, None
    thinking = head.strip()
    if thinking.startswith(THINK_START):
        thinking = thinking[len(THINK_START):].lstrip()
    return thinking, tail


def clean_text(text: str) -> str:
    """NFKC-normalise, drop invisible format characters (zero-width, bidi) and trailing chat special tokens.

    Special tokens inside the text are kept, so that later checks can see an injection attempt.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return _TRAILING_SPECIAL_RE.sub("", text)


def _unwrap(text: str) -> str:
    """Remove wrapping quote/bracket/emphasis/math-delimiter pairs and trailing punctuation, up to MAX_UNWRAP times."""
    for _ in range(MAX_UNWRAP):
        before = text
        text = text.strip().rstrip(_TRAILING_PUNCT).strip()
        boxed = _BOXED_RE.fullmatch(text)
        if boxed:
            text = boxed.group(1)
        elif (delims := _math_delims(text)) is not None:
            text = text[len(delims[0]):-len(delims[1])]
        elif len(text) >= 2 and _WRAP_PAIRS.get(text[0]) == text[-1] and _balanced_inside(text):
            text = text[1:-1]
        if text == before:
            break
    return _DEGREE_RE.sub("°", _LATEX_TEXT_RE.sub(r"\1", text))


def _math_delims(text: str) -> tuple[str, str] | None:
    """The LaTeX math delimiters wrapping the whole text ("$x$", "\\(x\\)", ...), if any."""
    for opener, closer in _MATH_DELIMS:
        inner = text[len(opener):-len(closer)] if len(text) > len(opener) + len(closer) else ""
        if text.startswith(opener) and text.endswith(closer) and inner.strip() and opener not in inner:
            return opener, closer
    return None


def _balanced_inside(text: str) -> bool:
    """True when text[0] and text[-1] form one pair, i.e. "(a) or (b)" is not unwrapped to "a) or (b"."""
    opener, closer = text[0], text[-1]
    if opener == closer:
        return text.count(opener) == 2
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == opener) - (ch == closer)
        if depth == 0 and i < len(text) - 1:
            return False
    return True


def answer_after_marker(text: str) -> str | None:
    """The cleaned answer after the last answer marker in text, else the last \\boxed{} content, else None."""
    text = clean_text(text)
    markers = list(_MARKER_RE.finditer(text))
    if markers:
        answer = text[markers[-1].end():]
        answer = re.split(r"\n\s*\n", answer.strip(), maxsplit=1)[0]
    else:
        boxes = _BOXED_RE.findall(text)
        if not boxes:
            return None
        answer = boxes[-1]
    answer = _EMPHASIS_RE.sub("", answer)
    return _unwrap(answer)


def extract_answer(response: str, require_think: bool = True) -> str | None:
    """The answer in a model response, or None on a format failure.

    With require_think, a response without ``</think>`` is a format failure; without it, a response
    lacking ``</think>`` is searched whole. An empty string is returned when the marker is present
    but nothing follows it (the caller decides that this earns nothing).
    """
    if not isinstance(response, str):
        return None
    _, final = split_think(response)
    if final is None:
        if require_think:
            return None
        final = response
    return answer_after_marker(final)
