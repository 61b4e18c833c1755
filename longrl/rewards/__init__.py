"""Rewards: answer extraction, rule scorers, and the verl-compatible ``compute_score`` entry point."""

from __future__ import annotations

from typing import Any

from longrl.data.records import TASK_TYPES, task_for_source
from longrl.rewards.rule import parse_ground_truth, rule_score


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    """verl custom-reward function: the rule reward of one response.

    Dispatches by data_source (see ``task_for_source``); ground_truth may be a bare answer, a list,
    or a "Therefore, the answer is X" / "The correct answer is (X)" string. ``extra_info`` may carry
    "question" and "document", used to reject answers that echo them, "answers" (all gold answers,
    preferred over ground_truth) and "task" (overrides the data_source dispatch), as longrl's verl
    export writes them. Requires ``</think>``.
    Returns {"score": float, "acc": bool, "pred": str | None, "format_ok": bool}.
    """
    info = extra_info if isinstance(extra_info, dict) else {}
    task = info.get("task") if info.get("task") in TASK_TYPES else task_for_source(data_source)
    answers = parse_ground_truth(info["answers"]) if info.get("answers") is not None else []
    result = rule_score(task, solution_str, answers or parse_ground_truth(ground_truth),
                        question=str(info.get("question") or ""), document=str(info.get("document") or ""))
    return {"score": result.score, "acc": result.acc, "pred": result.pred, "format_ok": result.format_ok}


__all__ = ["compute_score"]
