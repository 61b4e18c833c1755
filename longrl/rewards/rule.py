"""Rule-based reward: extract the answer, gate degenerate answers, score it by task.

Tasks: "qa" (guarded sub-exact-match, see ``qa.py``), "numeric" (sign-aware DocMath comparison,
see ``numeric.py``), "mcq" (one option letter, see ``choice.py``). The score is 1.0 or 0.0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from longrl.data.records import TASK_TYPES
from longrl.rewards.choice import choice_match
from longrl.rewards.degenerate import is_degenerate
from longrl.rewards.extract import answer_after_marker, extract_answer
from longrl.rewards.numeric import numeric_match
from longrl.rewards.qa import sub_exact_match


@dataclass(frozen=True)
class RuleResult:
    score: float
    """1.0 when the answer matches a gold answer, else 0.0."""
    acc: bool
    """score == 1.0."""
    pred: str | None
    """The extracted answer (None on a format failure)."""
    format_ok: bool
    """The response has '</think>' (when required) and an answer marker or \\boxed{}."""
    reason: str
    """'match', 'no match', 'no </think>', 'repeated </think>', 'no answer', or 'degenerate: <why>'."""


def parse_ground_truth(gt: object) -> list[str]:
    """Gold answers from a bare answer, a number, a list (or JSON list string), or a "... the answer is X" string."""
    if isinstance(gt, str):
        stripped = gt.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            try:
                items = json.loads(stripped)
            except ValueError:
                items = None
            if isinstance(items, list):
                return parse_ground_truth(items)
        marked = answer_after_marker(stripped)
        return [marked or stripped] if (marked or stripped) else []
    if isinstance(gt, int | float) and not isinstance(gt, bool):
        return [str(gt)]
    if isinstance(gt, Iterable):
        return [answer for item in gt for answer in parse_ground_truth(item)]
    raise TypeError(f"unsupported ground truth type {type(gt).__name__}")


def _matches(task: str, pred: str, answers: list[str]) -> bool:
    if task == "qa":
        return sub_exact_match(pred, answers, mode="train")
    if task == "numeric":
        return any(numeric_match(pred, gold, mode="train") for gold in answers)
    if task == "mcq":
        return any(choice_match(pred, gold) for gold in answers)
    raise ValueError(f"task must be one of {TASK_TYPES}, got {task!r}")


def rule_score(task: str, response: str, answers: list[str], question: str = "", document: str = "",
               require_think: bool = True, single_think: bool = False) -> RuleResult:
    """Score one response against its gold answers. Raises only on a bad task or an empty gold list.

    ``single_think``: a response that closes its thinking more than once (two or more ``</think>``, e.g. an
    answer block repeated until the token budget) is a format failure, reason 'repeated </think>'."""
    if task not in TASK_TYPES:
        raise ValueError(f"task must be one of {TASK_TYPES}, got {task!r}")
    if not answers:
        raise ValueError("no gold answers to score against")
    if require_think and (not isinstance(response, str) or "</think>" not in response):
        return RuleResult(0.0, False, None, False, "no </think>")
    if single_think and isinstance(response, str) and response.count("</think>") > 1:
        return RuleResult(0.0, False, None, False, "repeated </think>")
    pred = extract_answer(response, require_think=require_think)
    if pred is None:
        return RuleResult(0.0, False, None, False, "no answer")
    why = is_degenerate(pred, question, document)
    if why is not None:
        return RuleResult(0.0, False, pred, True, f"degenerate: {why}")
    ok = _matches(task, pred, answers)
    return RuleResult(float(ok), ok, pred, True, "match" if ok else "no match")
