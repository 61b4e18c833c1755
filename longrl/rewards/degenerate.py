"""Answers that earn nothing whatever the gold: the reward's and the judge's first gate.

A single letter is never degenerate (it is a multiple-choice answer), and neither is "0".
"""

from __future__ import annotations

import functools
import re

from longrl.rewards.extract import clean_text
from longrl.rewards.qa import normalize_answer

MAX_ANSWER_CHARS = 1000
"""Longer extracted answers are degenerate (the longest LongBench/Qasper golds are a few hundred)."""
DOC_COPY_MIN_WORDS = 40
"""An answer of at least this many words found verbatim (normalised) in the document is a paste."""
REPEAT_MIN_WORDS = 10
REPEAT_MAX_UNIQUE_FRACTION = 0.3
"""An answer of >= REPEAT_MIN_WORDS words with fewer distinct words than this fraction is a loop."""
QUESTION_ECHO_MIN_WORDS = 4
"""A question of at least this many words contained in the answer is an echo (shorter: only if equal)."""

_PLACEHOLDERS = frozenset({
    "answer", "insert answer here", "answer here", "your answer", "my answer", "final answer",
    "final answer here", "insert final answer here", "placeholder", "tbd", "todo", "xxx",
})
_STOPWORDS = frozenset({
    "the", "an", "of", "and", "or", "is", "are", "was", "were", "be", "it", "its", "to", "in", "on",
    "at", "for", "by", "with", "as", "this", "that", "these", "those", "there", "here", "so", "then",
    "therefore", "thus", "hence", "answer", "final", "which", "what", "who",
})
_JUDGE_MARKER_RE = re.compile(r"\[\[\s*(yes|no)\s*\]\]", re.IGNORECASE)


@functools.lru_cache(maxsize=8)
def _normalized_document(document: str) -> str:
    return normalize_answer(document)


def _is_single_token(raw: str) -> bool:
    """A lone letter or digit, possibly bracketed: an option letter or a small number."""
    return re.fullmatch(r"[(\[]?[A-Za-z0-9][)\].]?", raw) is not None


def is_degenerate(answer: str | None, question: str = "", document: str = "") -> str | None:
    """Why the answer can earn no credit ('empty', 'too long', ...), or None when it may."""
    if not isinstance(answer, str) or not answer.strip():
        return "empty"
    if len(answer) > MAX_ANSWER_CHARS:
        return "too long"
    raw = clean_text(answer).strip()
    if _JUDGE_MARKER_RE.search(raw):
        return "judge marker"
    if _is_single_token(raw):
        return None
    norm = normalize_answer(raw)
    words = norm.split()
    if not words:
        return "no content"
    if norm in _PLACEHOLDERS:
        return "placeholder"
    if all(w in _STOPWORDS for w in words):
        return "stopwords only"
    if len(words) >= REPEAT_MIN_WORDS and len(set(words)) < REPEAT_MAX_UNIQUE_FRACTION * len(words):
        return "repetitive"
    return _copy_reason(norm, words, question, document)


def _copy_reason(norm: str, words: list[str], question: str, document: str) -> str | None:
    """'question echo' or 'document copy' when the answer repeats the prompt, else None."""
    q = normalize_answer(question)
    if q and (norm == q or (len(q.split()) >= QUESTION_ECHO_MIN_WORDS and q in norm)):
        return "question echo"
    if document and len(words) >= DOC_COPY_MIN_WORDS and norm in _normalized_document(document):
        return "document copy"
    return None
