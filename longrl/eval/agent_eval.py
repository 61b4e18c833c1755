"""`longrl eval --agent memory`: the harness's generation step run through the memory agent.

Each (benchmark, question) is read by :class:`~longrl.agent.MemoryAgent` with its pending samples as
the agent's ``n`` trajectories; each trajectory's answer turn is the prediction, scored like any other
(``generations.jsonl`` -> :func:`~longrl.eval.harness.score_generations`), and every turn's prompt and
output is saved with it under ``turns``. The window is ``eval.max_input_tokens``: no turn's prompt may be
longer, and a question whose turns cannot fit (template + question + chunk + memory budget) is a failed
generation naming the budgets to lower. A re-run generates only the missing samples, as the harness does.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from longrl.agent import MemoryAgent
from longrl.config import AgentConfig, EvalConfig
from longrl.data.records import DocQASample
from longrl.eval.harness import CACHE_FILE, Generation, GenerationCache, Job, check_cache_meta


class AgentGeneration:
    """:func:`generate_with_agent` in the shape of ``harness.generate_all`` (``evaluate_benchmarks(generate=...)``):
    the harness's backend is not used; ``meta`` (the agent settings) is stored with the cache's settings, so
    a run with other settings needs another ``--out``. ``close()`` releases the generator."""

    def __init__(self, agent_cfg: AgentConfig, generator, *, seed: int = 0, parallel: int = 1):
        self.agent_cfg, self.generator, self.seed, self.parallel = agent_cfg, generator, seed, parallel
        self.meta = {"kind": "memory", **dataclasses.asdict(agent_cfg)}

    def __call__(self, samples, cfg: EvalConfig, backend, tokenizer, out_dir: Path, meta: dict[str, Any],
                 progress: Callable[[int, int], None] | None = None) -> tuple[GenerationCache, dict[str, int]]:
        return generate_with_agent(samples, cfg, self.agent_cfg, self.generator, tokenizer, out_dir, meta,
                                   seed=self.seed, parallel=self.parallel, progress=progress)

    def close(self) -> None:
        self.generator.close()


def question_seed(seed: int, benchmark: str, sample_id: str) -> int:
    """A stable per-question seed (independent of the order questions are run in)."""
    return (seed * 2_654_435_761 + zlib.crc32(f"{benchmark}/{sample_id}".encode())) % (2**31)


def generate_with_agent(samples: dict[str, list[DocQASample]], cfg: EvalConfig, agent_cfg: AgentConfig, generator,
                        tokenizer, out_dir: Path, meta: dict[str, Any], *, seed: int = 0, parallel: int = 1,
                        progress: Callable[[int, int], None] | None = None) -> tuple[GenerationCache, dict[str, int]]:
    """Fill the generation cache through the agent; returns it and generation counts (as ``generate_all``).

    ``parallel`` questions run at once (a server backend; an in-process model needs 1). With
    ``parallel == 1`` each question's sampling is seeded from (seed, benchmark, id).
    """
    check_cache_meta(out_dir, meta)
    cache = GenerationCache(out_dir / CACHE_FILE)
    agent = MemoryAgent(tokenizer, agent_cfg, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, window=cfg.max_input_tokens)
    todo = []
    for bench, items in samples.items():
        for s in items:
            missing = [i for i in range(cfg.k) if not cache.done((bench, s.id, i))]
            if missing:
                todo.append((bench, s, missing))
    total = sum(len(v) for v in samples.values()) * cfg.k
    pending = sum(len(m) for _, _, m in todo)
    counts = {"total": total, "cached": total - pending, "generated": 0, "failed": 0, "torn_lines": cache.torn_lines}

    def one(bench: str, s: DocQASample, missing: list[int]) -> None:
        try:
            trajs = agent.run(generator, s, n=len(missing),
                              seed=question_seed(seed, bench, s.id) if parallel == 1 else None)
        except (RuntimeError, ValueError) as e:  # WindowError, GenerationError, a backend failure
            for i in missing:
                cache.add(Job((bench, s.id, i), [], -1, False), Generation("", "error", error=f"{type(e).__name__}: {e}"))
            counts["failed"] += len(missing)
        else:
            for i, traj in zip(missing, trajs):
                answer = traj.answer
                job = Job((bench, s.id, i), [], max(len(t.prompt_ids) for t in traj.turns), False)
                cache.add(job, Generation(traj.response, answer.finish_reason, len(answer.completion_ids),
                                          turns=traj.records()))
            counts["generated"] += len(missing)
        if progress:
            progress(counts["generated"] + counts["failed"], pending)

    if parallel > 1:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            for fut in [pool.submit(one, *item) for item in todo]:
                fut.result()
    else:
        for item in todo:
            one(*item)
    return cache, counts
