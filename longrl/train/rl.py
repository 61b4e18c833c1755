"""The GRPO/DAPO RL loop (QwenLong-L1 recipe), callable per curriculum phase.

One step (:func:`rl_step`), top to bottom:

1. draw prompts q ~ D and sample G rollouts o_1..o_G ~ pi_old(.|q) per prompt;
2. score them: R_i = reward_fn(o_i) (rule / judge hybrid) + R_length(o_i) (DAPO overlong shaping);
3. dynamic sampling: drop groups whose accuracy is all-equal and draw again until the batch holds
   ``prompts_per_step`` informative groups or the round cap applies (DAPO Sec. 3.2);
4. advantages A_i = (R_i - mean_g R) / (std_g R + eps) (or the Dr.GRPO / task variants);
5. log pi_old per token once when the batch feeds more than one update (else pi_old = pi_theta.detach());
6. per mini-batch: J = 1/sum_i|o_i| sum_i sum_t min(r_it A_i, clip(r_it, 1-e_low, 1+e_high) A_i)
   [- beta KL(pi_theta || pi_ref)], accumulated over token-budget micro-batches with the WHOLE
   mini-batch's token count as the denominator, then AdamW with gradient clipping.

Rollouts are seeded per prompt from (seed, step, round, prompt index), so a step's rollouts do not
depend on how prompts are spread over processes, and a resumed run regenerates them exactly.

Processes (``accelerate launch --num_processes N``): every process draws the same prompts; process r
generates and scores prompts r, r+N, ...; the groups are gathered so every process makes the same
filtering and advantage decisions; micro-batches are split round-robin and gradients are summed
(see :mod:`longrl.train.optim`).

Generator backends: anything with ``generate(prompt_ids, n, max_new_tokens, temperature, top_p)``.
A server backend (OpenAI-compatible / vLLM) must see the new weights after every step: when the
generator has ``update_weights(model, step)``, the loop calls it after each optimizer step (the backend
may push weights or reload a checkpoint written by the loop).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from longrl.algo import aepo
from longrl.algo.advantages import compute_advantages
from longrl.algo.aepo import AEPOState, entropy_negative_mask
from longrl.algo.filtering import DynamicBatch
from longrl.algo.losses import merge_micro_metrics, policy_loss
from longrl.algo.shaping import overlong_penalty
from longrl.config import ConfigError, load_config
from longrl.curriculum.phases import PhaseSampler
from longrl.curriculum.samplers import PhaseSpec, source_weights
from longrl.data.prompt import chat_prompt_ids
from longrl.data.readers import read_sources
from longrl.data.records import DocQASample
from longrl.locations import check_model_config
from longrl.models import load_policy
from longrl.rewards.hybrid import HybridReward, RewardItem
from longrl.rewards.judge import make_judge
from longrl.rollout.hf import HFGenerator
from longrl.rollout.openai import OpenAIGenerator, OpenAIGeneratorConfig
from longrl.rollout.vllm_engine import VLLMGenerator
from longrl.rollout.vllm_server import VLLMServerGenerator
from longrl.train.checkpoint import announce_resume, load_checkpoint, open_run, save_checkpoint
from longrl.train.group_forward import group_logprobs
from longrl.train.optim import (
    build_optimizer,
    build_scheduler,
    pack_by_token_budget,
    seed_everything,
    shard,
    synced_update,
)
from longrl.train.runtime import (
    RolloutPolicy,
    default_accelerator,
    frozen_replica,
    is_sharded,
    lockstep_batches,
    save_final,
    shard_policy,
    sharded_forward,
)
from longrl.train.telemetry import Telemetry

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many consecutive updates with a NaN/inf loss or gradient."""


class BatchSampler(Protocol):
    def next_batch(self) -> list[DocQASample]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


RewardFn = Callable[[list[DocQASample], list[str]], list[Any]]
"""``reward_fn(samples, responses) -> results`` with ``.score`` (float), ``.acc`` (bool / float) and
``.pred`` (extracted answer or None) per response; optional ``.metrics() -> dict`` is logged."""

AccuracyCallback = Callable[[DocQASample, list[float]], None]
"""Called with every generated group's per-rollout accuracies (kept or filtered), on every process."""


def phase_config(cfg, phase: PhaseSpec | None = None, seed: int | None = None):
    """The :class:`~longrl.config.Config` one RL run trains with: ``cfg`` with ``phase``'s steps, output budget
    and temperature (resolved once by :func:`longrl.curriculum.resolve_phases`) and ``seed`` applied.

    It is the run's only source of settings, saved with its checkpoints and compared on resume."""
    out = copy.deepcopy(cfg)
    if phase is not None:
        out.rl.steps = phase.steps or cfg.rl.steps
        out.rollout.max_new_tokens = phase.max_output_tokens or cfg.rollout.max_new_tokens
        if phase.temperature >= 0:
            out.rollout.temperature = phase.temperature
    if seed is not None:
        out.seed = seed
    return out


def needs_old_logprobs(cfg) -> bool:
    """pi_old differs from pi_theta for some update, or AEPO needs old-policy entropies."""
    return (cfg.rl.mini_batches > 1 or cfg.rl.epochs > 1 or cfg.algo.entropy_mask_threshold > 0
            or cfg.algo.entropy_high > 0)


@dataclass
class Group:
    """One prompt and its G scored rollouts."""

    index: int
    """Position in the step's draw order (round * prompts_per_round + i)."""
    sample: DocQASample
    prompt_ids: list[int]
    completions: list[list[int]]
    texts: list[str]
    finish: list[str]
    scores: list[float]
    accs: list[float]
    preds: list[str | None]
    penalties: list[float] = field(default_factory=list)
    rollout_logps: list[list[float] | None] = field(default_factory=list)
    """Per completion: the rollout engine's log-probs of its tokens (log mu), or None (HF backend)."""

    @property
    def rewards(self) -> list[float]:
        return [s + p for s, p in zip(self.scores, self.penalties)]


@dataclass
class Seq:
    """One rollout in the training batch."""

    group: int
    prompt_ids: list[int]
    completion_ids: list[int]
    adv: float
    old_logps: torch.Tensor | None = None
    """[C] log pi_old, when a separate old-policy pass ran."""
    ref_logps: torch.Tensor | None = None
    """[C] log pi_ref, when a KL term is on."""
    mask: torch.Tensor | None = None
    """[C] bool, tokens in the loss (AEPO may remove some)."""
    rollout_logps: torch.Tensor | None = None
    """[C] log mu, the rollout engine's log-probs of the sampled tokens, when the backend returns them."""


@dataclass
class RLRun:
    """Everything one phase's loop touches."""

    cfg: Any
    """The run's config, the phase applied (:func:`phase_config`)."""
    model: Any
    tokenizer: Any
    generator: Any
    reward_fn: RewardFn
    sampler: BatchSampler
    accelerator: Any
    optimizer: Any
    scheduler: Any
    params: list
    ref_model: Any = None
    on_accuracies: AccuracyCallback | None = None
    nonfinite_in_row: int = 0
    skipped_updates: int = 0
    """Steps with no update (no informative group) plus updates skipped for a non-finite loss or gradient."""
    last_metrics: dict[str, float] = field(default_factory=dict)
    """The last step's metrics (saved in checkpoints, so a finished run can report them)."""
    aepo: Any = None
    """:class:`~longrl.algo.aepo.AEPOState` in AEPO batch mode (checkpointed), else None."""
    rollout: Any = None
    """:class:`~longrl.train.runtime.RolloutPolicy`: the weights the generator samples from / is synced with."""


@dataclass
class RLResult:
    steps: int
    """Steps completed (== the phase's steps)."""
    final_dir: Path
    last_metrics: dict[str, float]
    skipped_updates: int
    already_complete: bool = False
    """The run directory held a finished run: nothing was trained or rewritten."""


# ---------------------------------------------------------------------------- 1-3: rollouts, rewards, filtering
def rollout_seed(seed: int, step: int, round_idx: int, index: int) -> int:
    """Seed of one prompt's G rollouts; independent of the process layout."""
    return (((seed * 1_000_003 + step) * 1_009 + round_idx) * 100_003 + index) % (2**63 - 1)


def _generate_group(run: RLRun, prompt_ids: list[int], seed: int) -> list:
    """G completions of one prompt with the global RNG and the generator's sampling (``reseed``) seeded
    with ``seed``; the global RNG is restored after."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        run.generator.reseed(seed)
        return run.generator.generate([prompt_ids], n=run.cfg.rollout.group_size, max_new_tokens=run.cfg.rollout.max_new_tokens,
                                      temperature=run.cfg.rollout.temperature, top_p=run.cfg.rollout.top_p)[0]


def _score_groups(run: RLRun, groups: list[Group]) -> None:
    """R = reward_fn(o) + R_length(o), filled in place (one reward_fn call for all rollouts)."""
    samples = [g.sample for g in groups for _ in g.texts]
    results = run.reward_fn(samples, [t for g in groups for t in g.texts]) if samples else []
    ov = run.cfg.reward.overlong
    k = 0
    for g in groups:
        res = results[k:k + len(g.texts)]
        k += len(g.texts)
        g.scores = [float(r.score) for r in res]
        g.accs = [float(r.acc) for r in res]
        g.preds = [r.pred for r in res]
        lengths = [len(c) for c in g.completions]
        if ov.enabled:
            buffer = min(ov.buffer_tokens, run.cfg.rollout.max_new_tokens)
            g.penalties = overlong_penalty(lengths, run.cfg.rollout.max_new_tokens, buffer, ov.penalty_factor).tolist()
        else:
            g.penalties = [0.0] * len(lengths)


def rollout_round(run: RLRun, samples: list[DocQASample], step: int, round_idx: int) -> list[Group]:
    """Generate and score G rollouts for each prompt (this process's share), gathered to all processes."""
    acc = run.accelerator
    groups = []
    for i in range(acc.process_index, len(samples), acc.num_processes):
        prompt = chat_prompt_ids(run.tokenizer, samples[i])
        comps = _generate_group(run, prompt, rollout_seed(run.cfg.seed, step, round_idx, i))
        groups.append(Group(index=round_idx * len(samples) + i, sample=samples[i], prompt_ids=prompt,
                            completions=[list(c.token_ids) for c in comps], texts=[c.text for c in comps],
                            finish=[c.finish_reason for c in comps], scores=[], accs=[], preds=[],
                            rollout_logps=[getattr(c, "logprobs", None) for c in comps]))
    _score_groups(run, groups)
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        groups = sorted(gather_object(groups), key=lambda g: g.index)
    return groups


def collect_batch(run: RLRun, step: int, rollout=None) -> tuple[list, list, dict[str, float]]:
    """Steps 1-3: rounds of rollouts until the dynamic batch is full or capped.

    ``rollout(run, samples, step, round) -> groups`` makes one round (default :func:`rollout_round`; the
    memory agent passes its trajectory rounds); a group has ``index``, ``sample``, ``accs`` and ``rewards``
    (one per member). Returns ``(kept groups, every generated group, sampling/* metrics)``.
    """
    rollout = rollout or rollout_round
    ds = run.cfg.rl.dynamic_sampling
    dyn = DynamicBatch(target_groups=run.cfg.rl.prompts_per_step, max_rounds=ds.max_rounds if ds.enabled else 1,
                       on_cap=ds.on_cap)
    generated: list[Group] = []
    kept: list[Group] = []
    while not dyn.done:
        groups = rollout(run, run.sampler.next_batch(), step, dyn.rounds)
        generated += groups
        if run.on_accuracies is not None:
            for g in groups:
                run.on_accuracies(g.sample, list(g.accs))
        if not ds.enabled:
            kept = groups
            break
        values = [v for g in groups for v in (g.accs if ds.metric == "acc" else g.rewards)]
        dyn.add_round(values, [g.index for g in groups for _ in g.accs])
        kept_ids = set(dyn.kept)
        kept += [g for g in groups if g.index in kept_ids]
    if ds.enabled:
        dyn.finish()
        return kept, generated, dyn.metrics()
    return kept, generated, {"sampling/kept_groups": float(len(kept)), "sampling/filtered_groups": 0.0,
                             "sampling/rounds": 1.0}


# ---------------------------------------------------------------------------- 4: advantages
def group_advantages(groups: list[Group], mode: str, eps: float) -> list[list[float]]:
    """A_i per rollout, grouped like ``groups`` (group-normalised over each prompt's rollouts)."""
    rewards_N = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
    group_ids_N = [g.index for g in groups for _ in g.texts]
    task_ids_N = [g.sample.task for g in groups for _ in g.texts]
    adv_N = compute_advantages(rewards_N, group_ids_N, mode=mode, eps=eps, task_ids_N=task_ids_N).tolist()
    out, k = [], 0
    for g in groups:
        out.append(adv_N[k:k + len(g.texts)])
        k += len(g.texts)
    return out


def training_sequences(groups: list[Group], advantages: list[list[float]]) -> list[Seq]:
    """One :class:`Seq` per non-empty rollout of the kept groups (empty ones carry no tokens)."""
    seqs = []
    for gi, (g, advs) in enumerate(zip(groups, advantages)):
        mus = g.rollout_logps or [None] * len(g.completions)
        for comp, a, mu in zip(g.completions, advs, mus):
            if comp:
                seqs.append(Seq(group=gi, prompt_ids=g.prompt_ids, completion_ids=comp, adv=a,
                                mask=torch.ones(len(comp), dtype=torch.bool),
                                rollout_logps=None if mu is None else torch.tensor(mu, dtype=torch.float32)))
    return seqs


def make_pieces(seqs: list[Seq], budget: int, shared: bool) -> list[list[int]]:
    """Micro-batches: runs of same-group sequences costing at most ``budget`` tokens each.

    With the shared-prompt forward a piece costs P + sum |o_i|; without, sum (P + |o_i|).
    """
    pieces: list[list[int]] = []
    start = 0
    while start < len(seqs):
        end = start
        while end < len(seqs) and seqs[end].group == seqs[start].group:
            end += 1
        p = len(seqs[start].prompt_ids)
        costs = [len(seqs[i].completion_ids) + (0 if shared else p) for i in range(start, end)]
        room = max(1, budget - p) if shared else budget
        pieces += [[start + j for j in b] for b in pack_by_token_budget(costs, room)]
        start = end
    return pieces


def mini_batches(pieces: list[list[int]], seqs: list[Seq], n: int) -> list[list[list[int]]]:
    """Split pieces into ``n`` mini-batches along group boundaries (contiguous groups)."""
    n_groups = len({seqs[p[0]].group for p in pieces})
    per = max(1, math.ceil(n_groups / n))
    out: list[list[list[int]]] = []
    for piece in pieces:
        k = seqs[piece[0]].group // per
        while len(out) <= k:
            out.append([])
        out[k].append(piece)
    return [mb for mb in out if mb]


# ---------------------------------------------------------------------------- 5-6: log-probs and updates
def _pad(rows: list[torch.Tensor], width: int, fill) -> torch.Tensor:
    out = torch.full((len(rows), width), fill, dtype=rows[0].dtype)
    for b, r in enumerate(rows):
        out[b, :r.numel()] = r
    return out


def piece_logprobs(run: RLRun, model, seqs: list[Seq], with_entropy: bool):
    """``(logps_BT, entropy_BT|None, mask_BT)`` of one piece's completions under ``model``."""
    return sharded_forward(model, group_logprobs, seqs[0].prompt_ids, [s.completion_ids for s in seqs],
                           chunk=run.cfg.rl.logprob_chunk, temperature=run.cfg.rollout.temperature,
                           with_entropy=with_entropy, shared=run.cfg.rl.shared_prompt_forward,
                           autocast=run.cfg.rl.autocast)


@torch.no_grad()
def old_policy_pass(run: RLRun, seqs: list[Seq], pieces: list[list[int]]) -> dict[str, float]:
    """log pi_old (and the AEPO mask from old-policy entropies), and log pi_ref when KL is on, in place;
    returns the ``aepo/*`` metrics in AEPO batch mode.

    Every process computes every piece so all hold the same token counts for the loss denominators.
    """
    a = run.cfg.algo
    model = run.accelerator.unwrap_model(run.model)
    ent_sum, ent_n = 0.0, 0
    for piece in pieces:
        ps = [seqs[i] for i in piece]
        if needs_old_logprobs(run.cfg):
            with_entropy = a.entropy_mask_threshold > 0 or run.aepo is not None
            logps_BT, ent_BT, mask_BT = piece_logprobs(run, model, ps, with_entropy=with_entropy)
            if a.entropy_mask_threshold > 0:
                adv_B = torch.tensor([s.adv for s in ps], device=logps_BT.device)
                mask_BT = entropy_negative_mask(adv_B, ent_BT, mask_BT, a.entropy_mask_threshold,
                                                a.entropy_mask_level)
            elif run.aepo is not None:
                ent_sum += float(torch.where(mask_BT.bool(), ent_BT, 0.0).sum())
                ent_n += int(mask_BT.bool().sum())
            for b, s in enumerate(ps):
                s.old_logps = logps_BT[b, :len(s.completion_ids)].cpu()
                s.mask = mask_BT[b, :len(s.completion_ids)].bool().cpu()
        if run.ref_model is not None:
            ref_BT, _, _ = piece_logprobs(run, run.ref_model, ps, with_entropy=False)
            for b, s in enumerate(ps):
                s.ref_logps = ref_BT[b, :len(s.completion_ids)].cpu()
    return aepo_batch_rule(run, seqs, ent_sum, ent_n) if run.aepo is not None else {}


def aepo_batch_rule(run: RLRun, seqs: list[Seq], ent_sum: float, ent_n: int) -> dict[str, float]:
    """AEPO batch mode: move the hysteresis state with the batch entropy; while active, drop every
    negative-advantage sample from the update (its mask emptied)."""
    entropy = aepo.batch_mean_entropy(ent_sum, ent_n)
    dropped = 0.0
    if run.aepo.update(entropy) and seqs:
        for s in seqs:
            s.mask = aepo.drop_negative_samples(torch.tensor([s.adv]), s.mask[None])[0][0]
        dropped = sum(s.adv < 0 for s in seqs) / len(seqs)
    return {"aepo/active": float(run.aepo.active), "aepo/dropped_frac": dropped, "aepo/entropy": entropy}


def piece_loss(run: RLRun, seqs: list[Seq], num_tokens: int, num_seqs: int) -> tuple[torch.Tensor, dict]:
    """This piece's share of the mini-batch objective (clipped surrogate [+ KL] [- entropy])."""
    a = run.cfg.algo
    logps_BT, ent_BT, _ = piece_logprobs(run, run.model, seqs, with_entropy=True)
    device, width = logps_BT.device, logps_BT.shape[1]
    mask_BT = _pad([s.mask for s in seqs], width, False).to(device)
    if seqs[0].old_logps is not None:
        old_BT = _pad([s.old_logps for s in seqs], width, 0.0).to(device)
    else:
        old_BT = logps_BT.detach()
    ref_BT = _pad([s.ref_logps for s in seqs], width, 0.0).to(device) if run.ref_model is not None else None
    adv_B = torch.tensor([s.adv for s in seqs], dtype=torch.float32, device=device)
    has_mu = all(s.rollout_logps is not None for s in seqs)
    mu_BT = _pad([s.rollout_logps for s in seqs], width, 0.0).to(device) if has_mu else None
    return policy_loss(logps_BT, old_BT, adv_B, mask_BT, clip_low=a.clip_low, clip_high=a.clip_high,
                       dual_clip=a.dual_clip, ratio_cap=a.ratio_cap, agg=a.loss_agg, num_tokens=num_tokens,
                       num_seqs=num_seqs, norm_const=float(run.cfg.rollout.max_new_tokens), ref_logps_BT=ref_BT,
                       kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, entropy_BT=ent_BT,
                       entropy_coef=a.entropy_coef, rollout_logps_BT=mu_BT,
                       tis_cap=run.cfg.rollout.tis_cap if has_mu else 0.0)


def update(run: RLRun, seqs: list[Seq], mini_batch: list[list[int]]) -> dict[str, float]:
    """theta <- AdamW(theta, grad J_mb): token-budget micro-batches, exact global token-mean, clip."""
    members = [seqs[i] for piece in mini_batch for i in piece]
    num_tokens = int(sum(int(s.mask.sum()) for s in members))
    num_seqs = sum(1 for s in members if bool(s.mask.any()))
    acc = run.accelerator
    micro_metrics, loss_ok = [], True
    for piece, weight in lockstep_batches(run.model, acc, lambda r: shard(mini_batch, r, acc.num_processes)):
        loss, m = piece_loss(run, [seqs[i] for i in piece], num_tokens, num_seqs)
        loss_ok = loss_ok and bool(torch.isfinite(loss.detach()))
        (loss * weight if weight != 1.0 else loss).backward()  # weight 0: a pass that keeps FSDP ranks in step
        if weight:
            micro_metrics.append(m)
    result = synced_update(run.params, run.optimizer, acc, run.cfg.rl.optim.grad_clip, loss_ok)
    _count_nonfinite(run, result.applied)
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        micro_metrics = gather_object(micro_metrics)
    metrics = merge_micro_metrics(micro_metrics) if micro_metrics else {}
    metrics["actor/grad_norm"] = result.grad_norm
    return metrics


def _count_nonfinite(run: RLRun, applied: bool) -> None:
    if applied:
        run.nonfinite_in_row = 0
        return
    run.nonfinite_in_row += 1
    run.skipped_updates += 1
    log.warning("non-finite loss or gradient: update skipped (%d in a row)", run.nonfinite_in_row)
    if run.nonfinite_in_row >= run.cfg.rl.max_nonfinite_in_row:
        raise NonFiniteError(
            f"{run.nonfinite_in_row} consecutive updates had a NaN/inf loss or gradient; stopping. Lower "
            f"rl.optim.lr, check the data and rewards, or resume from the last checkpoint")


# ---------------------------------------------------------------------------- one step
def rl_step(run: RLRun, step: int) -> tuple[dict[str, float], list[Group]]:
    """One GRPO/DAPO step (module docstring, steps 1-6); returns (metrics, every generated group)."""
    t0 = time.perf_counter()
    run.model.eval()
    kept, generated, sampling = collect_batch(run, step)                        # 1-3: o ~ pi_old, R, filter
    t_gen = time.perf_counter()
    run.model.train()
    a = run.cfg.algo
    seqs = training_sequences(kept, group_advantages(kept, a.advantage, a.eps)) if kept else []   # 4: A_i
    train = optimize(run, step, seqs, sampling)                                  # 5-6
    timing = {"gen": t_gen - t0, "train": time.perf_counter() - t_gen}
    return step_metrics(run, generated, kept, sampling, train, timing), generated


def optimize(run: RLRun, step: int, seqs: list[Seq], sampling: dict[str, float]) -> dict[str, float]:
    """Steps 5-6 on a step's training sequences (log pi_old / pi_ref when needed, then the mini-batch
    updates), or a logged skip when there are none; then the schedule and the weight push. Shared by the
    single-turn step and the memory agent's. Returns the train metrics."""
    c = run.cfg
    train: dict[str, float] = {}
    if seqs:
        pieces = make_pieces(seqs, c.rl.micro_token_budget, c.rl.shared_prompt_forward)
        aepo_metrics = old_policy_pass(run, seqs, pieces)                        # 5: log pi_old, log pi_ref
        stats = [update(run, seqs, mb)                                           # 6: theta <- AdamW(grad J)
                 for _ in range(c.rl.epochs) for mb in mini_batches(pieces, seqs, c.rl.mini_batches)]
        train = _mean_metrics(stats) | aepo_metrics
    else:
        run.skipped_updates += 1
        log.warning("step %d: no informative group after %d round(s); no update", step + 1,
                    int(sampling.get("sampling/rounds", 0)))
    train["actor/lr"] = run.optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():  # a step whose update was skipped still advances the schedule
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        run.scheduler.step()
    _push_weights(run, step + 1)
    return train


def _push_weights(run: RLRun, step: int) -> None:
    """Hand the updated policy to the generator. A generator shared by all processes (one server,
    ``shared_across_processes``) is updated by the main process only, the others waiting for it."""
    gen = run.generator
    shared = gen.shared_across_processes
    run.rollout.refresh_for(gen)  # sharded policy: gathered once into the rollout replica (all processes)
    if not shared or run.accelerator.is_main_process:
        gen.update_weights(run.rollout.module, step)
    if shared and run.accelerator.num_processes > 1:
        run.accelerator.wait_for_everyone()


def _mean_metrics(stats: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for s in stats for k in s)
    return {k: sum(s[k] for s in stats if k in s) / sum(1 for s in stats if k in s) for k in keys}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def step_metrics(run: RLRun, generated: list[Group], kept: list[Group], sampling: dict, train: dict,
                 timing: dict[str, float]) -> dict[str, float]:
    """The step's namespaced record: reward/*, response_length/*, sampling/*, actor/*, loss/*, perf/*."""
    lengths = [len(c) for g in generated for c in g.completions]
    total = timing["gen"] + timing["train"]
    m = {
        "reward/mean": _mean([r for g in generated for r in g.rewards]),
        "reward/score": _mean([s for g in generated for s in g.scores]),
        "reward/acc": _mean([a for g in generated for a in g.accs]),
        "reward/overlong_penalty": _mean([p for g in generated for p in g.penalties]),
        "reward/batch_mean": _mean([r for g in kept for r in g.rewards]),
        "response_length/mean": _mean(lengths),
        "response_length/max": float(max(lengths, default=0)),
        "response_length/min": float(min(lengths, default=0)),
        "response_length/clip_ratio": _mean([float(f == "length") for g in generated for f in g.finish]),
        "actor/skipped_updates": float(run.skipped_updates),
        "perf/gen_time_s": timing["gen"],
        "perf/train_time_s": timing["train"],
        "perf/step_time_s": total,
        "perf/tokens_per_s": sum(lengths) / total if total > 0 else 0.0,
    }
    m.update(sampling)
    m.update(train)
    if hasattr(run.reward_fn, "metrics"):
        m.update(run.reward_fn.metrics())
    return m


def sample_records(groups: list, n: int, extra=None) -> list[dict[str, Any]]:
    """Up to ``n`` rollouts (one per group first) for the rollout-samples file; ``extra(group, j)`` adds the
    fields of the group's kind (default: a rollout's length and finish reason)."""
    extra = extra or (lambda g, j: {"length": len(g.completions[j]), "finish_reason": g.finish[j]})
    out = []
    for j in range(max((len(g.texts) for g in groups), default=0)):
        for g in groups:
            if len(out) >= n:
                return out
            if j < len(g.texts):
                out.append({"prompt_id": f"{g.sample.source}/{g.sample.id}", "response": g.texts[j],
                            "pred": g.preds[j], "answers": g.sample.answers, "score": g.scores[j],
                            "acc": g.accs[j], "reward": g.rewards[j], **extra(g, j)})
    return out


# ---------------------------------------------------------------------------- rewards
class HybridRewardFn:
    """:data:`RewardFn` over :class:`~longrl.rewards.hybrid.HybridReward` (rule score max judge verdict).

    ``metrics()`` returns the reward / judge counters since the previous call (this process's share).
    """

    def __init__(self, hybrid):
        self.hybrid = hybrid

    def __call__(self, samples: list[DocQASample], responses: list[str]) -> list[Any]:
        items = [RewardItem(task=s.task, question=s.question, response=r, answers=list(s.answers),
                            document=s.document) for s, r in zip(samples, responses)]
        return self.hybrid.score_batch(items)

    def metrics(self) -> dict[str, float]:
        m = self.hybrid.metrics()
        self.hybrid.reset_metrics()
        return m


def make_reward_fn(reward_cfg) -> HybridRewardFn:
    """The configured hybrid reward (judge from ``reward_cfg.judge``; none when backend is 'none')."""
    return HybridRewardFn(HybridReward(reward_cfg, make_judge(reward_cfg.judge)))


# ---------------------------------------------------------------------------- the phase loop
def _frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _checkpoint_state(run: RLRun, extra_state: dict[str, Any]) -> dict[str, Any]:
    return {"sampler": run.sampler.state_dict(),
            "extra": {k: v.state_dict() for k, v in extra_state.items()},
            "nonfinite_in_row": run.nonfinite_in_row, "skipped_updates": run.skipped_updates,
            "aepo": run.aepo.state_dict() if run.aepo is not None else None,
            "last_metrics": run.last_metrics}


def _resume(run: RLRun, path: Path | None, extra_state: dict[str, Any], run_dir: Path) -> int:
    """Restore checkpoint ``path`` (None: a fresh start); return the step to continue from."""
    if path is None:
        return 0
    trainer = load_checkpoint(path, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                              accelerator=run.accelerator)
    state = trainer["state"]
    run.sampler.load_state_dict(state["sampler"])
    for k, obj in extra_state.items():
        obj.load_state_dict(state["extra"][k])
    run.nonfinite_in_row, run.skipped_updates = state["nonfinite_in_row"], state["skipped_updates"]
    if run.aepo is not None and state.get("aepo"):
        run.aepo.load_state_dict(state["aepo"])
    run.last_metrics = state.get("last_metrics", {})
    announce_resume(run_dir, int(trainer["step"]), path, run.accelerator.is_main_process)
    return int(trainer["step"])


def build_generator(cfg, model, tokenizer):
    """The rollout backend ``cfg.rollout.backend`` names: in-process HF, or an OpenAI-compatible server
    that reloads the policy from ``sync_dir`` every ``sync_every`` steps (see docs/rollouts.md)."""
    r = cfg.rollout
    if r.backend == "hf":
        return HFGenerator(model, tokenizer, shared_prefill=r.shared_prefill, autocast=r.autocast)
    if r.backend in ("vllm", "vllm-server"):
        return _build_vllm_generator(cfg, model, tokenizer)

    return OpenAIGenerator(OpenAIGeneratorConfig(
        base_url=r.endpoint, model=r.model or cfg.model.path, prompt_format=r.prompt_format, split_n=r.split_n,
        extra_body=dict(r.extra_body), max_concurrency=r.max_concurrency, http=r.http_policy(),
        sync_dir=r.sync_dir or str(Path(cfg.output_dir) / "rollout_policy"), sync_every=r.sync_every,
        reload_path=r.reload_path), tokenizer)


def _build_vllm_generator(cfg, model, tokenizer):
    """'vllm': an in-process engine colocated with the trainer; 'vllm-server': a vLLM server (started here
    unless ``rollout.endpoint`` names one). Both start from ``model.path`` and are given the policy's
    current weights by the loop before the first rollout."""
    r = cfg.rollout
    common = dict(model_path=cfg.model.path, dtype=r.vllm_dtype, enforce_eager=r.vllm_enforce_eager,
                  max_model_len=r.vllm_max_model_len, kv_cache_gib=r.vllm_kv_cache_gib, seed=cfg.seed)
    if r.backend == "vllm":
        return VLLMGenerator(getattr(model, "module", model), tokenizer, **common,
                             gpu_memory_utilization=r.vllm_gpu_memory_utilization, sleep=r.vllm_sleep)

    return VLLMServerGenerator(getattr(model, "module", model), tokenizer, **common, endpoint=r.endpoint,
                               python=r.vllm_python, server_args=list(r.vllm_server_args),
                               startup_timeout_s=r.vllm_startup_timeout_s, http_policy=r.http_policy(),
                               max_concurrency=r.max_concurrency, sync_dir=r.sync_dir)


def _build_run(model, tokenizer, sampler, reward_fn, cfg, generator, ref_model, on_accuracies,
               accelerator) -> RLRun:
    if cfg.algo.kl_coef > 0 and ref_model is None:
        ref_model = frozen_replica(model) if is_sharded(model) else _frozen_copy(accelerator.unwrap_model(model))
    model = shard_policy(model, accelerator)  # FSDP2 when the accelerate config says so (docs/scaling.md)
    rollout = RolloutPolicy(model, accelerator)
    if generator is None:
        generator = build_generator(cfg, rollout.module, tokenizer)
    o = cfg.rl.optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay, tuple(o.betas))
    scheduler = build_scheduler(optimizer, o.warmup_steps, cfg.rl.steps, o.schedule)
    params = [p for p in model.parameters() if p.requires_grad]
    aepo = AEPOState(cfg.algo.entropy_low, cfg.algo.entropy_high) if cfg.algo.entropy_high > 0 else None
    return RLRun(cfg=cfg, model=model, tokenizer=tokenizer, generator=generator, reward_fn=reward_fn,
                 sampler=sampler, accelerator=accelerator, optimizer=optimizer, scheduler=scheduler,
                 params=params, ref_model=ref_model, on_accuracies=on_accuracies, aepo=aepo, rollout=rollout)


def train_rl(model, tokenizer, sampler: BatchSampler, reward_fn: RewardFn, cfg, *, run_dir: str | Path,
             phase: PhaseSpec | None = None, seed: int | None = None,
             on_accuracies: AccuracyCallback | None = None, generator=None,
             ref_model=None, extra_state: dict[str, Any] | None = None, accelerator=None,
             allow_config_change: bool = False, make_step=None) -> RLResult:
    """Run (or resume, or re-enter after completion) one RL phase on ``model`` in place.

    ``cfg`` is the :class:`~longrl.config.Config` (algo, rl, rollout, reward.overlong, logging, seed,
    save_every, keep_checkpoints); ``phase`` (a curriculum phase as :func:`longrl.curriculum.resolve_phases`
    resolved it: ``CurriculumSampler.spec``) sets its steps, output budget and temperature, ``seed`` the seed
    (:func:`phase_config`; None keeps the config). ``sampler.next_batch()``
    must return ``rl.prompts_per_step`` samples. ``on_accuracies(sample, accs)`` sees every generated
    group. ``extra_state`` maps names to objects with ``state_dict`` / ``load_state_dict`` (e.g. the
    retrospective pool) saved in and restored from the phase's checkpoints. ``ref_model`` (or a frozen
    copy of ``model`` at entry, when ``algo.kl_coef > 0``) is pi_ref.

    Checkpoints: ``run_dir/checkpoints`` every ``save_every`` steps and at the last step; calling again
    with the same ``run_dir`` resumes from the newest valid one (announced on stderr), after comparing
    the resolved config with ``run_dir/config.yaml``: a change that alters the trajectory raises
    ConfigError unless ``allow_config_change`` (see :func:`longrl.train.checkpoint.check_run_config`).
    A finished run (last checkpoint at the last step, ``final`` written) is reported, with its saved
    final metrics, and left untouched. The final model + tokenizer are written to ``run_dir/final``.
    Every process must call this with the same arguments. ``make_step(run) -> (step_fn, records_fn)`` swaps
    the step (``step_fn(run, step) -> (metrics, generated)``) and its rollout-sample records
    (``records_fn(generated, n)``); default :func:`rl_step` / :func:`sample_records` (the memory agent
    passes its own: :mod:`longrl.train.agent_rl`).
    """
    accelerator = accelerator or default_accelerator()
    source_of = cfg.source_of
    cfg = phase_config(cfg, phase, seed)
    steps = cfg.rl.steps
    run_dir, extra_state = Path(run_dir), extra_state or {}
    ckpt = open_run(run_dir, cfg.to_dict(), allow_change=allow_config_change, source_of=source_of,
                    main=accelerator.is_main_process)
    seed_everything(cfg.seed)
    own_generator = generator is None
    run = _build_run(model, tokenizer, sampler, reward_fn, cfg, generator, ref_model, on_accuracies, accelerator)
    try:
        start = _resume(run, ckpt, extra_state, run_dir)
        if start >= steps and (run_dir / "final").is_dir():
            if accelerator.is_main_process:
                print(f"{run_dir}: already complete at step {start}; nothing to do", file=sys.stderr)
            return RLResult(steps=steps, final_dir=run_dir / "final", last_metrics=run.last_metrics,
                            skipped_updates=run.skipped_updates, already_complete=True)
        if start < steps:
            run.rollout.refresh_for(run.generator)
            run.generator.sync_weights(run.rollout.module)  # the engine starts from model.path
        step_fn, records_fn = make_step(run) if make_step else (rl_step, sample_records)
        metrics = _loop(run, run_dir, start, extra_state, step_fn, records_fn)
    finally:
        if own_generator:
            run.generator.close()
    final = save_final(model, tokenizer, run_dir / "final", accelerator)
    return RLResult(steps=steps, final_dir=final, last_metrics=metrics, skipped_updates=run.skipped_updates)


def _loop(run: RLRun, run_dir: Path, start: int, extra_state: dict[str, Any], step_fn, records_fn
          ) -> dict[str, float]:
    """Steps ``start .. rl.steps - 1`` with telemetry and checkpoints; returns the last step's metrics."""
    c, lc = run.cfg, run.cfg.logging
    steps = c.rl.steps
    tel = Telemetry(run_dir, total_steps=steps, start_step=start, description=run_dir.name, jsonl=lc.jsonl,
                    tensorboard=lc.tensorboard, wandb_project=lc.wandb_project, progress=lc.progress,
                    enabled=run.accelerator.is_main_process, config=c.to_dict())
    metrics = dict(run.last_metrics)
    try:
        for step in range(start, steps):
            metrics, generated = step_fn(run, step)
            run.last_metrics = metrics
            if lc.log_every and ((step + 1) % lc.log_every == 0 or step + 1 == steps):
                tel.log(step + 1, metrics)
            if lc.rollout_samples_every and (step + 1) % lc.rollout_samples_every == 0:
                tel.write_samples(step + 1, records_fn(generated, lc.rollout_samples))
            if (c.save_every and (step + 1) % c.save_every == 0) or step + 1 == steps:
                save_checkpoint(run_dir / "checkpoints", step + 1, model=run.model, optimizer=run.optimizer,
                                scheduler=run.scheduler, state=_checkpoint_state(run, extra_state),
                                accelerator=run.accelerator, keep=c.keep_checkpoints)
    finally:
        tel.close()
    return metrics


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides (e.g. model.path=runs/x/sft/final)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume a run whose config changed in a way that alters training (prints what changed)")


def run(args: argparse.Namespace) -> int:
    """`longrl rl`: one RL stage over data.sources, written to <output_dir>/rl (resumable)."""
    return run_command(args, train_rl, "rl", "RL")


def run_command(args: argparse.Namespace, train, out_name: str, label: str,
                describe: Callable[[dict], str] = lambda m: "") -> int:
    """A training command over ``data.sources`` (``longrl rl``, ``longrl agent-rl``): ``train`` (a function
    with :func:`train_rl`'s signature) writes to ``<output_dir>/<out_name>``; ``describe(metrics)`` adds to
    the summary line."""
    cfg = load_config(args.config, args.overrides)
    check_model_config(cfg)
    if not cfg.data.sources:
        raise ConfigError("data.sources", "no RL data: set data.sources", args.config)
    samples = read_sources(cfg.data.sources, cfg.data.on_error)
    sampler = PhaseSampler(samples, batch_size=cfg.rl.prompts_per_step, seed=cfg.seed,
                           weights_by_source=source_weights(cfg.data.sources, samples, "data.sources"),
                           task_balanced=cfg.curriculum.task_balanced)
    accelerator = default_accelerator()
    model, tokenizer = load_policy(cfg.model)
    model.to(accelerator.device)
    result = train(model, tokenizer, sampler, make_reward_fn(cfg.reward), cfg,
                   run_dir=Path(cfg.output_dir) / out_name, accelerator=accelerator,
                   allow_config_change=args.allow_config_change)
    if accelerator.is_main_process:
        m = result.last_metrics
        head = f"{label} already complete at step {result.steps}" if result.already_complete else f"{label} done"
        print(f"{head}: {result.steps} steps, reward {m.get('reward/mean', float('nan')):.3f}, "
              f"acc {m.get('reward/acc', float('nan')):.3f}{describe(m)}, skipped updates {result.skipped_updates}; "
              f"model in {result.final_dir}")
    return 0
