"""Document-QA metrics: LongBench/SQuAD normalisation, EM, token F1 and sub-exact-match.

``normalize_answer``, ``exact_match`` and ``token_f1`` follow LongBench ``metrics.py``
(lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace; F1 over
whitespace tokens, max over the gold answers). Unlike the HotpotQA script used in QwenLong-L1's
``eval/``, F1 has no yes/no special case, as in LongBench.

``sub_exact_match`` has two modes.

- ``mode="eval"`` is the official definition (QwenLong-L1 ``docqa.py`` / ``eval/``): normalised gold
  is a character substring of the normalised prediction or vice versa. One deliberate difference:
  a prediction that normalises to "" (e.g. "the", ".") scores 0, where the official code gives
  1 because "" is a substring of every string.
- ``mode="train"`` (the reward) closes the exploits of that definition: containment is over whole
  tokens, not characters ("on" is not in "london"); a prediction containing the gold earns credit
  only when it is at most ``2 * len(gold) + 4`` tokens and does not hedge (alternatives with
  "or"/"not"/"either"/"neither"/"nor" absent from the gold, both "yes" and "no", or a list of at
  least 3 items where the gold has fewer); a prediction contained in the gold earns credit only
  when it covers more than half of the gold's tokens ("Bob" is not "Bob Dylan"; "Nicholas Bacon" is
  "Sir Nicholas Bacon"); the judge decides the rest.

  Answer plus justification versus a hedge (the line, docs/rewards.md): a prediction that STARTS with
  the gold may go on with one short clause, at most ``MAX_JUSTIFICATION_TOKENS`` words, that opens with
  a justification word (``JUSTIFICATION_WORDS``: as, according, because, per, based, which, ...), has
  no hedge word nor a word that adds candidates or doubt (and, also, well, maybe, ...) and names no other candidate: no capitalised word except its first and reference nouns
  (Document, Passage, ...). "Hollywood, Florida, as stated in the second document" is an answer;
  "Hollywood, Florida, as well as Miami" and "Hollywood, Florida, according to Jeff Lynne" are not
  (the general guard then applies, and rejects them as lists). A yes/no gold is matched when the
  prediction's first word is that answer, the opposite word does not occur, and it is at most
  ``MAX_YES_NO_TOKENS`` words ("No. The document says ..."); "Probably yes" is left to the judge.
  A degree sign reads as the word: "45°" is "45 degrees".
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_LIST_SPLIT_RE = re.compile(r",(?!\d)|;|\n|\||\band\b", re.IGNORECASE)
_HEDGE_WORDS = frozenset({"or", "not", "nor", "either", "neither"})
MAX_EXTRA_FACTOR = 2
"""A prediction containing the gold may be up to MAX_EXTRA_FACTOR * len(gold) + MAX_EXTRA_TOKENS tokens."""
MAX_EXTRA_TOKENS = 4
MAX_JUSTIFICATION_TOKENS = 8
"""Longest clause (normalised words) allowed after a gold the prediction starts with."""
MAX_YES_NO_TOKENS = 24
"""Longest yes/no answer with its justification (normalised words)."""
JUSTIFICATION_WORDS = frozenset({
    "as", "according", "because", "since", "per", "based", "which", "where", "who", "from", "in", "stated",
    "mentioned", "see", "given", "this", "that", "it", "cited", "reported", "confirmed", "shown", "noted",
})
_REFERENCE_NOUNS = frozenset({"document", "documents", "passage", "passages", "paragraph", "paragraphs",
                              "section", "table", "figure", "article", "text", "source", "context", "i"})
_YES_NO = {"yes": "no", "no": "yes"}
_CLAUSE_ADDS = frozenset({"and", "also", "well", "plus", "other", "alternatively", "possibly", "maybe",
                          "perhaps", "probably", "might", "could", "likely", "unclear", "unsure"})
"""Words that add candidates or doubt: a clause with one is not a justification."""


def normalize_answer(s: str) -> str:
    """LongBench/SQuAD normalisation: lower, drop punctuation, drop articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES_RE.sub(" ", s).split())


def exact_match(pred: str, golds: Sequence[str]) -> bool:
    """Normalised prediction equals some normalised gold."""
    p = normalize_answer(pred)
    return any(p == normalize_answer(g) for g in golds)


def token_f1(pred: str, golds: Sequence[str]) -> float:
    """LongBench qa_f1_score: token-level F1 of normalised strings, max over golds (0.0 with no golds)."""
    return max((_f1(normalize_answer(pred).split(), normalize_answer(g).split()) for g in golds), default=0.0)


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def sub_exact_match(pred: str, golds: Sequence[str], mode: str = "train") -> bool:
    """Gold contained in prediction or prediction in gold, for some gold; see the module docstring."""
    if mode == "eval":
        p = normalize_answer(pred)
        return bool(p) and any(_official_sub_em(p, normalize_answer(g)) for g in golds)
    if mode == "train":
        return any(_guarded_sub_em(pred, g) for g in golds)
    raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")


def _official_sub_em(p: str, g: str) -> bool:
    return g in p or p in g


def _contains(haystack: list[str], needle: list[str]) -> bool:
    """needle occurs as a contiguous run of tokens in haystack (an empty needle never does)."""
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def _guarded_sub_em(pred: str, gold: str) -> bool:
    pred, gold = pred.replace("°", " degrees "), gold.replace("°", " degrees ")
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return False
    if p == g:
        return True
    if len(g) == 1 and g[0] in _YES_NO:
        return p[0] == g[0] and _YES_NO[g[0]] not in p and len(p) <= MAX_YES_NO_TOKENS
    if _contains(p, g):
        if _justified(pred, p, g):
            return True
        return len(p) <= MAX_EXTRA_FACTOR * len(g) + MAX_EXTRA_TOKENS and not _hedges(pred, gold, p, g)
    return _contains(g, p) and 2 * len(p) > len(g)


def _justified(pred: str, p: list[str], g: list[str]) -> bool:
    """pred is the gold followed by one short justification clause (see the module docstring)."""
    rest = p[len(g):]
    if p[:len(g)] != g or not 0 < len(rest) <= MAX_JUSTIFICATION_TOKENS or rest[0] not in JUSTIFICATION_WORDS:
        return False
    if (_HEDGE_WORDS | _CLAUSE_ADDS) & set(rest):
        return False
    raw = [w for w in pred.split() if normalize_answer(w)]
    if [normalize_answer(w) for w in raw] != p:
        return False  # the word-by-word reading differs from the whole-string one: no exemption
    clause = [w.strip(string.punctuation) for w in raw[len(g) + 1:]]
    return not any(w[:1].isupper() and w.lower() not in _REFERENCE_NOUNS for w in clause)


def _hedges(pred: str, gold: str, p: list[str], g: list[str]) -> bool:
    """The prediction offers alternatives or a list that the gold does not."""
    if (_HEDGE_WORDS & set(p)) - set(g):
        return True
    if {"yes", "no"} <= set(p) and not {"yes", "no"} <= set(g):
        return True
    return _list_items(pred) >= 3 and _list_items(gold) < 3


def _list_items(text: str) -> int:
    """Number of non-empty items when text is split on commas (not thousands separators), ';', '|', 'and', newlines."""
    return sum(1 for part in _LIST_SPLIT_RE.split(text) if part.strip(" .\t"))
