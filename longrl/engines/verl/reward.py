"""longrl's hybrid reward as verl's ``reward.custom_reward_function`` (``name: compute_score``).

verl imports this file by path in its reward workers and calls, per response,
``compute_score(data_source, solution_str, ground_truth, extra_info, longrl_config=...)``;
``longrl_config`` (from ``reward.custom_reward_function.reward_kwargs``) is the resolved longrl YAML
the pipeline wrote, whose ``reward`` section configures the rule scorers, the judge (cache, retries,
circuit breaker), injection defence and the combine rule. The task, question and all gold answers come
from ``extra_info`` as longrl's phase parquet writes them (:func:`longrl.data.readers.verl_row`).

Returns ``{"score", "acc", "rule_score", "judge", "decided_by", "format_ok"}``: verl uses ``score``
(the dapo reward manager adds the overlong penalty) and keeps the rest as reward extra info, so
``acc`` is what ``algorithm.filter_groups.metric=acc`` reads.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from longrl.config import load_config
from longrl.engines.verl.driver import row_task
from longrl.rewards.hybrid import HybridReward, RewardItem
from longrl.rewards.judge import make_judge
from longrl.rewards.rule import parse_ground_truth


@lru_cache(maxsize=4)
def hybrid_for(config_path: str):
    """One HybridReward (and judge) per config file and process."""
    reward_cfg = load_config(config_path).reward
    return HybridReward(reward_cfg, make_judge(reward_cfg.judge))


def reward_item(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None):
    """The RewardItem of one verl row (task / answers / question from extra_info, as longrl writes them)."""
    info = extra_info if isinstance(extra_info, dict) else {}
    task = row_task(data_source, info)
    answers = parse_ground_truth(info["answers"]) if info.get("answers") is not None else []
    return RewardItem(task=task, question=str(info.get("question") or ""), response=solution_str,
                      answers=answers or parse_ground_truth(ground_truth), document=str(info.get("document") or ""))


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  longrl_config: str = "", **_: Any) -> dict:
    """verl custom reward: longrl's hybrid reward of one response (see the module docstring)."""
    if not longrl_config:
        raise ValueError("compute_score needs reward_kwargs.longrl_config (the pipeline sets it)")
    item = reward_item(data_source, solution_str, ground_truth, extra_info)
    hybrid = hybrid_for(longrl_config)
    # verl calls this from a thread pool: requests run concurrently (the judge client is thread-safe);
    # the per-process counters behind reward metrics may undercount under races, the scores never do.
    (res,) = hybrid.score_batch([item])
    return {"score": float(res.score), "acc": float(res.acc), "rule_score": float(res.rule_score),
            "judge": -1.0 if res.judge_verdict is None else float(res.judge_verdict),
            "decided_by": res.decided_by, "format_ok": bool(res.format_ok)}
