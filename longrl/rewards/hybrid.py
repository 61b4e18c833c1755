"""Hybrid reward: the rule score combined with an LLM judge's verdict (QwenLong-L1: max(rule, judge)).

Per response: the rule scorer extracts the answer and scores it; the judge is asked only when it can
change the outcome (rule score < 1 for ``combine='max'``), the task is one the judge may rescue, and
the extracted answer is neither degenerate nor suspicious (verdict markers, chat tokens, text that
addresses the judge). A judge that gives no verdict leaves the rule score in place; that is counted
(``reward/judge_failures``), and ``reward.max_consecutive_judge_failures`` no-verdicts in a row raise
:class:`JudgeFailureError` so training never runs on a silently degraded reward.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from longrl.config import RewardConfig
from longrl.rewards.judge import Judge, JudgeRequest, Verdict
from longrl.rewards.rule import RuleResult, rule_score


class JudgeFailureError(RuntimeError):
    """Too many consecutive judge requests gave no verdict."""


@dataclass
class RewardItem:
    task: str
    """'qa', 'numeric' or 'mcq'."""
    question: str
    response: str
    """The full model response (thinking included)."""
    answers: list[str]
    """Gold answers."""
    document: str = ""


@dataclass
class RewardResult:
    score: float
    acc: bool
    rule_score: float
    judge_verdict: Verdict
    """None when the judge was not asked or gave no verdict (see ``judge_skip``)."""
    pred: str | None
    format_ok: bool
    decided_by: str
    """'rule' (the rule score stands), 'judge' (the verdict set the score), 'fallback' (no verdict)."""
    judge_skip: str = ""
    """Why the judge was not asked ('' when it was)."""


_SUSPICIOUS = [
    ("verdict marker", re.compile(r"\[\s*\[\s*(?:y\s*e\s*s|n\s*o)\s*\]\s*\]|\[\[|\]\]", re.IGNORECASE)),
    ("chat special token", re.compile(r"<\|[^<>|]{0,64}\|>|<｜[^<>｜]{0,64}｜>|</?think>", re.IGNORECASE)),
    ("instruction override", re.compile(
        r"\b(?:ignore|disregard|forget|override)\b.{0,60}\b(?:instructions?|prompts?|rules?|above|previous|prior)\b",
        re.IGNORECASE | re.DOTALL)),
    ("addresses the judge", re.compile(
        r"\b(?:dear|hey|hello|attention|note to(?: the)?)\s+(?:judge|grader|evaluator|verifier|model|assistant)\b"
        r"|\byou\s+(?:must|should|have to|need to|are required to|will)\b|\bsystem prompt\b|\banswer\s*[12]\b"
        r"|\b(?:judge|grader|evaluator|verifier)\s+(?:should|must|will|needs? to|is to)\b"
        r"|\b(?:reference|gold|ground[- ]truth)\s+answer\b"
        r"|\b(?:output|respond|reply|say|print|write|answer)\s+(?:with\s+)?[\"'\[]*(?:yes|equivalent)\b"
        r"|\b(?:are|is)\s+(?:semantically\s+)?(?:equivalent|identical)\b",
        re.IGNORECASE)),
]


def suspicious_reason(prediction: str) -> str | None:
    """Why an answer looks like an attempt to steer the judge, or None."""
    text = unicodedata.normalize("NFKC", prediction)
    for reason, pattern in _SUSPICIOUS:
        if pattern.search(text):
            return reason
    return None


def combine_gold_verdicts(verdicts: Sequence[Verdict]) -> Verdict:
    """Several gold answers: any YES is a YES; otherwise any no-verdict leaves the question open."""
    if any(v is True for v in verdicts):
        return True
    if any(v is None for v in verdicts) or not verdicts:
        return None
    return False


def combine_scores(rule: RuleResult, verdict: Verdict, combine: str, judge_weight: float) -> tuple[float, bool, str]:
    """(score, acc, decided_by) for one response; a missing verdict keeps the rule score."""
    if combine == "rule" or verdict is None:
        return rule.score, rule.acc, "rule"
    v = 1.0 if verdict else 0.0
    if combine == "max":
        return (1.0, True, "judge") if v > rule.score else (rule.score, rule.acc, "rule")
    if combine == "judge":
        return v, verdict, "judge"
    score = (1.0 - judge_weight) * rule.score + judge_weight * v
    return score, score >= 1.0, "judge"


def judge_against_golds(judge: Judge, items: Sequence[tuple[str, str, list[str]]]) -> list[Verdict]:
    """One verdict per (question, prediction, golds): one judge request per gold, in one batch, combined
    with :func:`combine_gold_verdicts`."""
    reqs, owners = [], []
    for k, (question, prediction, golds) in enumerate(items):
        for gold in golds:
            reqs.append(JudgeRequest(question, prediction, gold))
            owners.append(k)
    per_item: list[list[Verdict]] = [[] for _ in items]
    for k, v in zip(owners, judge.judge_many(reqs)):
        per_item[k].append(v)
    return [combine_gold_verdicts(v) for v in per_item]


class HybridReward:
    """Rule scores plus judge verdicts for batches of responses, with failure accounting."""

    def __init__(self, reward_cfg: RewardConfig, judge: Judge | None):
        self.cfg = reward_cfg
        self.judge = judge if reward_cfg.combine != "rule" else None
        self.consecutive_failures = 0
        self.reset_metrics()

    def reset_metrics(self) -> None:
        """Zero the reward counters (the consecutive-failure count is not a metric and survives)."""
        self.counts = {"n": 0, "judge_calls": 0, "judge_failures": 0, "judge_decided": 0, "judge_credit": 0,
                       "skipped_degenerate": 0, "skipped_suspicious": 0}

    def score_batch(self, items: Sequence[RewardItem]) -> list[RewardResult]:
        rules = [rule_score(it.task, it.response, it.answers, question=it.question, document=it.document,
                            require_think=self.cfg.require_think, single_think=self.cfg.single_think)
                 for it in items]
        skips = [self._skip_reason(it, r) for it, r in zip(items, rules)]
        verdicts = self._ask_judge(items, rules, skips)
        results = []
        for rule, skip, verdict in zip(rules, skips, verdicts):
            score, acc, decided_by = combine_scores(rule, verdict, self.cfg.combine, self.cfg.judge_weight)
            if not skip and verdict is None:
                decided_by = "fallback"
            results.append(RewardResult(score, acc, rule.score, verdict, rule.pred, rule.format_ok,
                                        decided_by, skip))
        self._account(results)
        return results

    def _skip_reason(self, item: RewardItem, rule: RuleResult) -> str:
        """Why the judge is not asked about this response ('' = ask it)."""
        if self.judge is None:
            return "no judge"
        if item.task not in self.cfg.judge_tasks:
            return f"task {item.task}"
        if self.cfg.combine == "max" and rule.score >= 1.0:
            return "rule score 1"
        if not rule.pred or not rule.pred.strip():
            return "no answer" if rule.format_ok else "format"
        if rule.reason.startswith("degenerate: "):  # rule_score ran is_degenerate on the same inputs
            return rule.reason
        suspicious = suspicious_reason(rule.pred) if self.cfg.judge_skip_suspicious else None
        return f"suspicious: {suspicious}" if suspicious else ""

    def _ask_judge(self, items: Sequence[RewardItem], rules: list[RuleResult], skips: list[str]) -> list[Verdict]:
        asked = [i for i, s in enumerate(skips) if not s]
        verdicts: list[Verdict] = [None] * len(items)
        if not asked:
            return verdicts
        triples = [(items[i].question, rules[i].pred or "", items[i].answers) for i in asked]
        for i, v in zip(asked, judge_against_golds(self.judge, triples)):
            verdicts[i] = v
        return verdicts

    def _account(self, results: list[RewardResult]) -> None:
        c = self.counts
        c["n"] += len(results)
        for r in results:
            c["skipped_degenerate"] += r.judge_skip.startswith("degenerate")
            c["skipped_suspicious"] += r.judge_skip.startswith("suspicious")
            if r.judge_skip:
                continue
            c["judge_calls"] += 1
            c["judge_decided"] += r.decided_by == "judge"
            c["judge_credit"] += r.judge_verdict is True and r.rule_score < 1.0
            if r.judge_verdict is None:
                c["judge_failures"] += 1
                self.consecutive_failures += 1
            else:
                self.consecutive_failures = 0
            limit = self.cfg.max_consecutive_judge_failures
            if limit and self.consecutive_failures >= limit:
                raise JudgeFailureError(self._failure_message(limit))

    def _failure_message(self, limit: int) -> str:
        jm = self.judge.metrics() if self.judge is not None else {}
        last = getattr(getattr(self.judge, "stats", None), "last_error", "") or "none recorded"
        where = getattr(self.judge, "url", "") or getattr(getattr(self.judge, "cfg", None), "model", "")
        return (f"the judge gave no verdict for {self.consecutive_failures} responses in a row "
                f"(limit reward.max_consecutive_judge_failures={limit}); stopping instead of training on "
                f"rule-only rewards. Judge: {where or type(self.judge).__name__}; last error: {last}; "
                f"unparsable outputs: {jm.get('judge/unparsable', 0)}, circuit-breaker rejections: "
                f"{jm.get('judge/breaker_rejections', 0)}. Fix or restart the judge, raise the limit, "
                f"set it to 0 to never stop, or set reward.judge.backend=none for rule-only rewards.")

    def metrics(self) -> dict[str, float]:
        c = self.counts
        n, asked = c["n"], c["judge_calls"]
        out = {
            "reward/n": n, "reward/judge_calls": asked, "reward/judge_failures": c["judge_failures"],
            "reward/judge_failure_rate": c["judge_failures"] / asked if asked else 0.0,
            "reward/judge_asked_frac": asked / n if n else 0.0,
            "reward/judge_decided_frac": c["judge_decided"] / n if n else 0.0,
            "reward/judge_credit": c["judge_credit"],
            "reward/judge_skipped_degenerate": c["skipped_degenerate"],
            "reward/judge_skipped_suspicious": c["skipped_suspicious"],
            "reward/judge_consecutive_failures": self.consecutive_failures,
        }
        if self.judge is not None:
            out.update(self.judge.metrics())
        return out
