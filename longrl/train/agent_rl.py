"""RL of the memory agent: GRPO/DAPO over multi-turn trajectories (``longrl agent-rl``).

One step, top to bottom (the single-turn loop of :mod:`longrl.train.rl` with trajectories for rollouts):

1. draw prompts q ~ D; for each, G trajectories tau_1..tau_G ~ pi_old with the memory agent
   (:class:`~longrl.agent.MemoryAgent`): memory turns over the document's chunks, then the answer turn;
2. score each trajectory by its answer: R_i = reward_fn(answer_i) (the same rule / judge hybrid) +
   R_length(answer_i) (DAPO overlong shaping on the answer turn);
3. dynamic sampling: drop questions whose G trajectories all score the same, draw again (DAPO);
4. A_i = group-normalised R_i (:func:`~longrl.algo.advantages.compute_advantages`), broadcast to every
   token of every turn of tau_i;
5-6. the turns become training sequences (prompt = that turn's prompt, completion = its output, advantage
   A_i) and go through the single-turn update unchanged: log pi_old when needed, then the clipped
   surrogate with token-level aggregation over ALL turns' tokens of the mini-batch (``policy_loss``), AdamW.

Turns with the same prompt (every first turn of a question; later turns whose memories coincide) form
one shared-prompt group in the training forward. Rollouts are seeded per (seed, step, round, question,
turn, distinct prompt), so a resumed run regenerates them exactly; checkpoints, telemetry, weight pushes
to a server backend, the retrospective pool (``on_accuracies`` / ``extra_state``) and the non-finite
guard are the single-turn loop's.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object

from longrl.agent import MemoryAgent, Trajectory
from longrl.algo.advantages import compute_advantages
from longrl.algo.shaping import overlong_penalty
from longrl.data.records import DocQASample
from longrl.train import rl
from longrl.train.rl import RLResult, RLRun, Seq


@dataclass
class AgentGroup:
    """One question and its G scored trajectories (the fields :func:`rl.step_metrics` reads)."""

    index: int
    sample: DocQASample
    trajectories: list[Trajectory]
    scores: list[float] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)
    preds: list[str | None] = field(default_factory=list)
    penalties: list[float] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [t.response for t in self.trajectories]

    @property
    def completions(self) -> list[list[int]]:
        """The answer turns' tokens (response-length metrics and overlong shaping are about the answer)."""
        return [t.answer.completion_ids for t in self.trajectories]

    @property
    def finish(self) -> list[str]:
        return [t.answer.finish_reason for t in self.trajectories]

    @property
    def rewards(self) -> list[float]:
        return [s + p for s, p in zip(self.scores, self.penalties)]


# ---------------------------------------------------------------------------- 1-3: trajectories, rewards, filtering
def make_agent(run: RLRun) -> MemoryAgent:
    """The agent sampling at the run's temperature; the answer turn's budget is the run's max_new_tokens."""
    ro = run.cfg.rollout
    return MemoryAgent(run.tokenizer, run.cfg.agent, max_new_tokens=ro.max_new_tokens, temperature=ro.temperature,
                       top_p=ro.top_p)


def rollout_round(run: RLRun, agent: MemoryAgent, samples: list[DocQASample], step: int,
                  round_idx: int) -> list[AgentGroup]:
    """G trajectories per question (this process's share), scored, gathered to all processes."""
    acc = run.accelerator
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    groups = []
    for i in range(acc.process_index, len(samples), acc.num_processes):
        seed = rl.rollout_seed(run.cfg.seed, step, round_idx, i)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            trajs = agent.run(run.generator, samples[i], n=run.cfg.rollout.group_size, seed=seed)
        groups.append(AgentGroup(index=round_idx * len(samples) + i, sample=samples[i], trajectories=trajs))
    score_groups(run, agent, groups)
    if acc.num_processes > 1:
        groups = sorted(gather_object(groups), key=lambda g: g.index)
    return groups


def score_groups(run: RLRun, agent: MemoryAgent, groups: list[AgentGroup]) -> None:
    """R = reward_fn(answer) + R_length(answer), in place (one reward_fn call for every trajectory)."""
    samples = [g.sample for g in groups for _ in g.trajectories]
    results = run.reward_fn(samples, [t for g in groups for t in g.texts]) if samples else []
    ov, k = run.cfg.reward.overlong, 0
    for g in groups:
        res = results[k:k + len(g.trajectories)]
        k += len(g.trajectories)
        g.scores, g.accs, g.preds = [float(r.score) for r in res], [float(r.acc) for r in res], [r.pred for r in res]
        lengths = [len(c) for c in g.completions]
        if ov.enabled:
            budget = agent.answer_budget
            g.penalties = overlong_penalty(lengths, budget, min(ov.buffer_tokens, budget), ov.penalty_factor).tolist()
        else:
            g.penalties = [0.0] * len(lengths)


def collect_batch(run: RLRun, agent: MemoryAgent, step: int) -> tuple[list[AgentGroup], list[AgentGroup], dict]:
    """Steps 1-3: rounds of trajectories until the dynamic batch is full or capped (``rl.collect_batch`` with
    the agent's rounds)."""
    return rl.collect_batch(run, step, lambda r, samples, s, k: rollout_round(r, agent, samples, s, k))


# ---------------------------------------------------------------------------- 4: the trajectory advantage on every turn
def turn_sequences(groups: list[AgentGroup], mode: str, eps: float) -> list[Seq]:
    """One :class:`Seq` per non-empty turn of every kept trajectory, with its trajectory's advantage.

    ``Seq.group`` numbers distinct turn prompts (0, 1, ... in order of first appearance) and the
    sequences are ordered by it, so each shared-prompt group is one contiguous run.
    """
    rewards_N = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
    group_ids_N = [g.index for g in groups for _ in g.trajectories]
    task_ids_N = [g.sample.task for g in groups for _ in g.trajectories]
    adv_N = compute_advantages(rewards_N, group_ids_N, mode=mode, eps=eps, task_ids_N=task_ids_N).tolist()
    prompt_group: dict[tuple[int, ...], int] = {}
    seqs, n = [], 0
    for g in groups:
        for traj in g.trajectories:
            for turn in traj.turns:
                if turn.completion_ids:
                    gid = prompt_group.setdefault(tuple(turn.prompt_ids), len(prompt_group))
                    mu = None if turn.logprobs is None else torch.tensor(turn.logprobs, dtype=torch.float32)
                    seqs.append(Seq(group=gid, prompt_ids=turn.prompt_ids, completion_ids=turn.completion_ids,
                                    adv=adv_N[n], mask=torch.ones(len(turn.completion_ids), dtype=torch.bool),
                                    rollout_logps=mu))
            n += 1
    return sorted(seqs, key=lambda s: s.group)


# ---------------------------------------------------------------------------- one step
def agent_step(run: RLRun, agent: MemoryAgent, step: int) -> tuple[dict[str, float], list[AgentGroup]]:
    """One GRPO/DAPO step over trajectories (module docstring); returns (metrics, every generated group)."""
    t0 = time.perf_counter()
    run.model.eval()
    kept, generated, sampling = collect_batch(run, agent, step)                  # 1-3
    t_gen = time.perf_counter()
    run.model.train()
    c = run.cfg
    seqs = turn_sequences(kept, c.algo.advantage, c.algo.eps) if kept else []   # 4
    train = rl.optimize(run, step, seqs, sampling)                              # 5-6
    timing = {"gen": t_gen - t0, "train": time.perf_counter() - t_gen}
    metrics = rl.step_metrics(run, generated, kept, sampling, train, timing) | agent_metrics(generated, seqs)
    return metrics, generated


def agent_metrics(generated: list[AgentGroup], seqs: list[Seq]) -> dict[str, float]:
    """agent/*: turns per trajectory, memory length, tokens trained on per step."""
    trajs = [t for g in generated for t in g.trajectories]
    memories = [len(t.turns[-2].memory) for t in trajs if len(t.turns) > 1]
    return {"agent/turns_mean": rl._mean([float(len(t.turns)) for t in trajs]),
            "agent/final_memory_chars": rl._mean([float(m) for m in memories]),
            "agent/empty_memory_frac": rl._mean([float(m == 0) for m in memories]),
            "agent/generated_tokens": float(sum(len(x.completion_ids) for t in trajs for x in t.turns)),
            "agent/train_sequences": float(len(seqs)),
            "agent/train_tokens": float(sum(len(s.completion_ids) for s in seqs))}


def trajectory_records(groups: list[AgentGroup], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` trajectories (one per question first), every turn included, for the rollout-samples file."""
    return rl.sample_records(groups, n, lambda g, j: {"turns": g.trajectories[j].records()})


# ---------------------------------------------------------------------------- the loop
def train_agent_rl(model, tokenizer, sampler: rl.BatchSampler, reward_fn: rl.RewardFn, cfg, **kwargs) -> RLResult:
    """:func:`longrl.train.rl.train_rl` for the memory agent (``cfg.agent``): same arguments, run directory
    layout, checkpoints, resume rules and result, with :func:`agent_step` as the step; ``rollout.max_new_tokens``
    (or the phase's output budget) is the answer turn's budget unless ``agent.answer_new_tokens`` sets it."""
    def make_step(run: RLRun):
        agent = make_agent(run)
        return (lambda r, step: agent_step(r, agent, step)), trajectory_records

    return rl.train_rl(model, tokenizer, sampler, reward_fn, cfg, make_step=make_step, **kwargs)


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    rl.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`longrl agent-rl`: RL of the memory agent over data.sources, written to <output_dir>/agent_rl (resumable)."""
    return rl.run_command(args, train_agent_rl, "agent_rl", "agent RL",
                          lambda m: f", turns {m.get('agent/turns_mean', float('nan')):.1f}")
