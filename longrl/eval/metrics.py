"""Evaluation metrics as the official code computes them, plus avg@k and the unbiased pass@k.

Sources, and what each piece reproduces:

- Tongyi-Zhiwen/QwenLong-L1 ``eval/{hotpotqa,...,docmath}.py``: answer extraction after the last
  ``</think>`` (:func:`extract_qa_answer`, :func:`extract_docmath_answer`), EM and the two-way
  substring sub-EM, the answer the verify scripts send the judge (:func:`judge_prediction`), and the
  paper's score = max(sub-EM or accuracy, judge).
- THUDM/LongBench ``metrics.py`` / ``eval.py``: normalisation and token F1, max over the gold answers.
- yale-nlp/DocMath-Eval ``utils/evaluation_utils.py``: ``get_acc`` with ``normalize`` and
  ``compare_two_numbers`` (3-decimal rounding; QwenLong-L1's copy rounds to 2 decimals).

The metric arithmetic lives in ``longrl.rewards.qa`` (``mode="eval"`` sub-EM) and
``longrl.rewards.numeric`` (``numeric_match(mode="eval")``); ``tests/eval`` checks both against
independent transcriptions of the official code. Known differences from the official code: a
prediction that normalises to "" gets no sub-EM credit (officially "" is a substring of every gold);
DocMath's ``eval`` is replaced by a safe literal/arithmetic evaluator; LongBench's F1 has no
yes/no special case, unlike the HotpotQA F1 inside QwenLong-L1's scripts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from longrl.rewards.numeric import docmath_normalize, numeric_match, parse_number
from longrl.rewards.qa import exact_match, sub_exact_match, token_f1

_MODEL_END_TOKENS = ("<｜Assistant｜>", "<｜end▁of▁sentence｜>")
"""Stray DeepSeek-R1 tokens the official extraction strips from the answer."""

# --------------------------------------------------------------------------------------------------
# Answer extraction (QwenLong-L1 eval scripts)
# --------------------------------------------------------------------------------------------------


def split_thinking(response: str) -> tuple[str, str | None]:
    """(thinking, final) where final is the text after the last ``</think>`` (None when absent)."""
    if "</think>" not in response:
        return "", None
    head, final = response.rsplit("</think>", 1)
    return head.replace("<think>", "", 1).strip(), final.strip()


def answer_region(response: str) -> str:
    """The text the official scripts search: after the last ``</think>``, else the whole response."""
    _, final = split_thinking(response)
    return final if final else response


def extract_qa_answer(response: str) -> str | None:
    """Text after the last "the answer is" (case-sensitive), stripped of '*', dots and end tokens."""
    text = answer_region(response).replace("*", "")
    if "the answer is" not in text:
        return None
    ans = text.rsplit("the answer is", 1)[-1].strip()
    for tok in _MODEL_END_TOKENS:
        ans = ans.replace(tok, "")
    return ans.strip().strip(".").strip() or None


_DOCMATH_ANSWER = re.compile(r"the answer is (=?≈?`?%?\$?°?£?€?¥?-?[0-9.,]+)", re.IGNORECASE)
_DOCMATH_CLAUSE = re.compile(r"the answer is:?[ \t]*([^\n]{1,200})", re.IGNORECASE)


def extract_docmath_answer(response: str) -> str | None:
    """The answer clause after the first "the answer is" (case-insensitive, '*' removed, up to the end of
    its sentence), as DocMath-Eval's extractor would hand it to ``get_acc``.

    DocMath-Eval asks an LLM for "a numeric value without any additional words"; here the clause is kept
    when DocMath-Eval's normalisation reads a number from it ("USD 12.5", "x = 12.5", "25/2"), else the one
    number :func:`~longrl.rewards.numeric.parse_number` reads from it ("12.5 units of stock" -> "12.5"),
    else QwenLong-L1's regex (first "the answer is <number>", parentheses and commas removed).
    """
    text = answer_region(response).replace("*", "")
    m = _DOCMATH_CLAUSE.search(text)
    if m:
        clause = re.split(r"\.(?:\s|$)", m.group(1).strip(), maxsplit=1)[0].strip()
        if clause and docmath_normalize(clause) is not None:
            return clause
        value = parse_number(clause) if clause else None
        if value is not None:
            return repr(value)
    m = _DOCMATH_ANSWER.search(text.replace("(", "").replace(")", ""))
    if not m:
        return None
    return m.group(1).replace(",", "").rstrip(".") or None


def judge_prediction(response: str, pred: str | None) -> str | None:
    """What the official verify scripts send the judge: the extracted answer, else the final text."""
    if pred:
        return pred
    text = answer_region(response).replace("Therefore, the answer is", "").strip().rstrip(".").strip()
    return text or None


# --------------------------------------------------------------------------------------------------
# Per-sample metrics (the rule scorers' official-semantics modes, checked against the official code)
# --------------------------------------------------------------------------------------------------


def qa_metrics(pred: str | None, golds: Sequence[str], first_gold_only: bool = False) -> dict[str, float]:
    """{'em', 'sub_em', 'f1'}: LongBench normalisation, each the max over the gold answers (or over the
    first only, as QwenLong-L1's scripts do); all 0 without a prediction."""
    golds = list(golds[:1]) if first_gold_only else list(golds)
    if not pred or not golds:
        return {"em": 0.0, "sub_em": 0.0, "f1": 0.0}
    return {"em": float(exact_match(pred, golds)), "sub_em": float(sub_exact_match(pred, golds, mode="eval")),
            "f1": float(token_f1(pred, golds))}


def docmath_metrics(pred: str | None, golds: Sequence[str], first_gold_only: bool = False) -> dict[str, float]:
    """{'acc'}: DocMath-Eval ``get_acc`` on the extracted answer (max over golds); 0 without a prediction."""
    golds = list(golds[:1]) if first_gold_only else list(golds)
    if not pred:
        return {"acc": 0.0}
    return {"acc": float(any(numeric_match(pred, g, mode="eval") for g in golds))}


# --------------------------------------------------------------------------------------------------
# avg@k and pass@k
# --------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_k(scores_per_question: Sequence[Sequence[float]]) -> float:
    """Mean over questions of the mean score over each question's samples."""
    if not scores_per_question:
        return 0.0
    return sum(sum(s) / len(s) for s in scores_per_question) / len(scores_per_question)


def mean_pass_at_k(scores_per_question: Sequence[Sequence[float]], k: int) -> float:
    """pass@k averaged over questions; a sample counts as correct when its score is 1."""
    if not scores_per_question:
        return 0.0
    return sum(pass_at_k(len(s), sum(1 for x in s if x >= 1.0), k)
               for s in scores_per_question) / len(scores_per_question)


def pass_k_values(n: int) -> list[int]:
    """The k reported for n samples per question: 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]
