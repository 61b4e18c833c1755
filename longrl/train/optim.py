"""Optimizer, LR schedule, token-budget packing, and the synchronised update shared by SFT and RL.

Gradient synchronisation across processes (``accelerate launch --num_processes N``) is one summed
all-reduce of the flattened gradients through ``accelerate``'s ``reduce``, after all micro-batches.
The loss of every micro-batch is already divided by the WHOLE global mini-batch's token count, so the
sum over micro-batches and ranks is the exact global token-mean. We do not wrap the model in DDP:
the chunked log-prob kernels call the decoder body and the LM-head weight directly (bypassing the
DDP forward hook), and ranks may hold different numbers of micro-batches, which DDP's per-backward
reducer cannot express without dummy passes. Under FSDP2 (:mod:`longrl.train.runtime`) the gradient
shards are summed by FSDP's reduce-scatter instead and the ranks run padded, equal numbers of passes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (not on biases and norm gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas))


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown LR schedule '{schedule}'")


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, schedule))


def pack_by_token_budget(costs: list[int], budget: int) -> list[list[int]]:
    """Greedy in-order packing of item indices into bins of at most ``budget`` tokens.

    An item costlier than the budget gets a bin of its own. Order is kept, so packing is deterministic.
    """
    bins: list[list[int]] = []
    used = 0
    for i, c in enumerate(costs):
        if bins and used + c <= budget:
            bins[-1].append(i)
            used += c
        else:
            bins.append([i])
            used = c
    return bins


def shard(items: list, rank: int, world: int) -> list:
    """Round-robin share of ``items`` for process ``rank`` of ``world``."""
    return items[rank::world]


@dataclass
class UpdateResult:
    applied: bool
    """False when the loss or a gradient was NaN/inf (the update was skipped)."""
    grad_norm: float
    """Global gradient norm before clipping (nan when skipped)."""


def synced_update(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, accelerator,
                  grad_clip: float, local_loss_ok: bool) -> UpdateResult:
    """Sum gradients over processes, check them, clip, and step; always leaves grads zeroed.

    Every rank reaches the same decision: the local "loss was finite" flag travels in the same
    all-reduce as the gradients.
    """
    if _sharded(params):
        return _sharded_update(params, optimizer, accelerator, grad_clip, local_loss_ok)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flag = torch.tensor([0.0 if local_loss_ok else 1.0], device=grads[0].device, dtype=grads[0].dtype)
    flat = torch.cat([g.reshape(-1) for g in grads] + [flag])
    if accelerator is not None and accelerator.num_processes > 1:
        flat = accelerator.reduce(flat, reduction="sum")
    bad_loss = bool(flat[-1] > 0)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    ok = not bad_loss and bool(torch.isfinite(norm))
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return UpdateResult(applied=ok, grad_norm=float(norm) if ok else float("nan"))


def _sharded(params: list[torch.nn.Parameter]) -> bool:
    from torch.distributed.tensor import DTensor

    return bool(params) and isinstance(params[0], DTensor)


def _sharded_update(params, optimizer, accelerator, grad_clip: float, local_loss_ok: bool) -> UpdateResult:
    """:func:`synced_update` for FSDP2 (DTensor) parameters: their gradient shards already hold the sum
    over processes (FSDP's reduce-scatter); only the "loss was finite" flag is all-reduced here."""
    from torch.distributed.tensor import DTensor

    flag = torch.tensor([0.0 if local_loss_ok else 1.0], device=params[0].device)
    if accelerator is not None and accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None],
                                          grad_clip if grad_clip > 0 else float("inf"))
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    ok = not bool(flag[0] > 0) and bool(torch.isfinite(norm))
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return UpdateResult(applied=ok, grad_norm=float(norm) if ok else float("nan"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass


def rng_state() -> dict:
    """Python, torch (CPU and CUDA) and numpy RNG states of this process."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
