"""Process-level helpers every trainer shares: the accelerator, sharding (FSDP2), and the final model directory.

Sharded training (FSDP2, ``torch.distributed.fsdp.fully_shard``) is picked the accelerate way: launch with
an accelerate config whose ``distributed_type`` is ``FSDP`` and ``fsdp_version`` is 2 (see
``configs/accelerate/`` and docs/scaling.md). :func:`shard_policy` then shards every decoder layer and the
rest of the model (embeddings, final norm, LM head: one root unit) over the processes, with the
accelerate FSDP plugin's ``reshard_after_forward``, mixed-precision and CPU-offload settings.

The trainers call the decoder body and the LM-head weight directly (the chunked log-prob kernels), not
the model's ``forward``; under FSDP2 such a call goes through :func:`sharded_forward`, which runs it as a
registered forward method of the root unit, so the root's parameters are gathered for it and its
gradients reduce-scattered after it, like a ``forward``. Gradients are summed over processes, not
averaged (the losses are already divided by the global batch's token count), and every process must
run the same number of forward/backward passes: :func:`lockstep_batches` pads the shorter shares with
passes of weight 0.

The rollout engine needs whole weights: :class:`RolloutPolicy` keeps an unsharded replica that
:meth:`RolloutPolicy.refresh` fills from the sharded policy (one all-gather per tensor, once per step).
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import shutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from longrl.models import save_pretrained_dir
from longrl.rollout.base import Generator

log = logging.getLogger(__name__)

T = TypeVar("T")


def default_accelerator():
    """The process's ``accelerate.Accelerator`` (CPU unless CUDA is available).

    With several processes, the process group is destroyed at interpreter exit: left to the
    interpreter's teardown, gloo's threads can abort the process ("terminate called without an active
    exception") after the work is done."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if accelerator.num_processes > 1:
        atexit.register(_close_process_group)
    return accelerator


def _close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_distributed(rc: int) -> None:
    """In a process of a multi-process launch: wait for the others, close the process group, flush, and
    leave with ``rc`` at once (``os._exit``). Interpreter teardown with gloo's threads still alive
    sometimes aborts ("terminate called without an active exception", about 1 launch in 20 here) after
    all work is done, which the launcher reports as a failed run. A single process returns normally."""
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(rc)


# ---------------------------------------------------------------------------- FSDP2
def fsdp_plugin(accelerator):
    """The accelerate FSDP plugin this run shards with, or None (no sharding).

    On GPUs accelerate sets ``distributed_type`` to FSDP from the launch config. On CPU it keeps
    ``MULTI_CPU`` (gloo) and drops the plugin, so the plugin is rebuilt here from the same environment
    (``ACCELERATE_USE_FSDP`` and the ``FSDP_*`` variables ``accelerate launch`` sets).
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type == DistributedType.FSDP:
        return accelerator.state.fsdp_plugin
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or accelerator.num_processes < 2:
        return None
    return FullyShardedDataParallelPlugin()


def is_sharded(model) -> bool:
    """True when ``model`` was sharded by :func:`shard_policy` (an FSDP2 module)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _layer_classes(model: nn.Module, plugin) -> set[type]:
    names = list(plugin.transformer_cls_names_to_wrap or getattr(model, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(f"FSDP: no module of the classes {names} in {type(model).__name__} to shard as layers; "
                         f"set fsdp_transformer_layer_cls_to_wrap in the accelerate config")
    return classes


def shard_policy(model, accelerator):
    """Shard ``model`` in place over the processes when the run uses FSDP (:func:`fsdp_plugin`); returns it.

    Each decoder layer is one FSDP2 unit and the root (embeddings, final norm, LM head; tied weights
    stay tied) another. Call it before the optimizer is built (its parameters become DTensors) and
    after any frozen copy (a KL reference) is taken. A model already sharded is returned as it is.
    """
    plugin = fsdp_plugin(accelerator)
    if plugin is None or is_sharded(model):
        return model
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if plugin.fsdp_version != 2:
        raise ValueError(f"FSDP: fsdp_version {plugin.fsdp_version} in the accelerate config; longrl's trainer "
                         f"shards with FSDP2 only (set fsdp_version: 2)")
    if hasattr(model, "peft_config"):
        raise ValueError("FSDP: sharding a LoRA (peft) policy is not supported by longrl's trainer; train LoRA "
                         "without FSDP (it fits one GPU) or set model.lora.enabled=false")
    kwargs = _fully_shard_kwargs(plugin)
    classes = tuple(_layer_classes(model, plugin))
    for module in model.modules():
        if isinstance(module, classes):
            fully_shard(module, **kwargs)
    fully_shard(model, **{k: v for k, v in kwargs.items() if k != "reshard_after_forward"})
    for module in model.modules():
        if is_sharded(module):
            module.set_gradient_divide_factor(1.0)  # sum over processes: the losses are global means already
            module.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM / AVG)
    model.longrl_forward = types.MethodType(_call_on, model)
    register_fsdp_forward_method(model, "longrl_forward")
    if accelerator.is_main_process:
        n = sum(1 for m in model.modules() if is_sharded(m))
        log.info("FSDP2: %s sharded over %d processes (%d units)", _plain_class(model).__name__,
                 accelerator.num_processes, n)
    return model


def _fully_shard_kwargs(plugin) -> dict[str, Any]:
    """``fully_shard`` keywords from the accelerate plugin's FSDP2 settings (strings from the environment
    included)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    reshard = plugin.reshard_after_forward
    if isinstance(reshard, str):
        reshard = reshard.strip().lower() in ("true", "1", "yes", "full_shard")
    offload = plugin.cpu_offload
    if not isinstance(offload, OffloadPolicy):
        offload = CPUOffloadPolicy() if offload is True or getattr(offload, "offload_params", False) else OffloadPolicy()
    mp = plugin.mixed_precision_policy
    return {"reshard_after_forward": bool(reshard), "offload_policy": offload,
            "mp_policy": mp if isinstance(mp, MixedPrecisionPolicy) else MixedPrecisionPolicy()}


def _call_on(self, fn, *args, **kwargs):
    """The body of the root's registered forward method: ``fn(model, ...)``, views among its outputs
    copied (FSDP's backward hook on an output must not be lost to a later in-place op on a view)."""
    from torch.utils._pytree import tree_map

    out = fn(self, *args, **kwargs)
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) and t._is_view() else t, out)


def sharded_forward(model, fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(model, *args, **kwargs)``; for a sharded model, run as a forward of its root unit (its
    parameters gathered before, gradient hooks registered on the outputs). Every process must make
    the same sequence of such calls."""
    if is_sharded(model):
        return model.longrl_forward(fn, *args, **kwargs)
    return fn(model, *args, **kwargs)


def lockstep_batches(model, accelerator, share_of: Callable[[int], list[T]]) -> list[tuple[T, float]]:
    """This process's micro-batches ``share_of(rank)``, each with weight 1.

    For a sharded model the list is padded to the longest share of any process with repeats of a real
    micro-batch of weight 0 (the caller multiplies its loss by the weight and ignores its metrics), so
    every process runs the same number of forward/backward passes (FSDP's collectives pair them up).
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = share_of(rank)
    out = [(mb, 1.0) for mb in mine]
    if world > 1 and is_sharded(model):
        shares = [share_of(r) for r in range(world)]
        filler = next((s[0] for s in shares if s), None)
        out += [(filler, 0.0)] * (max(len(s) for s in shares) - len(mine))
    return out


def reshard(model) -> None:
    """Free every gathered (unsharded) parameter of a sharded model (a no-grad forward leaves the
    root's gathered); local, no communication."""
    for module in model.modules():
        if is_sharded(module):
            module.reshard()


def full_tensors(model, *, to_cpu: bool = False, main_only: bool = False,
                 is_main: bool = True) -> dict[str, torch.Tensor]:
    """``{name: whole tensor}`` of every parameter (tied ones once, under their first name) and
    persistent buffer of ``model``, gathered from the shards (a collective: every process must call it).

    ``main_only``: only the main process (``is_main``) keeps the tensors, the others get ``{}``.
    """
    from torch.distributed.tensor import DTensor

    reshard(model)
    out: dict[str, torch.Tensor] = {}
    buffers = {n for n, _ in model.named_buffers()} - _non_persistent_buffers(model)
    items = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n in buffers]
    for name, t in items:
        full = t.full_tensor() if isinstance(t, DTensor) else t
        full = full.detach()
        if main_only and not is_main:
            continue
        out[name] = full.cpu() if to_cpu else full
    return out


def _non_persistent_buffers(model: nn.Module) -> set[str]:
    names = set()
    for prefix, module in model.named_modules():
        for b in getattr(module, "_non_persistent_buffers_set", ()):
            names.add(f"{prefix}.{b}" if prefix else b)
    return names


def _plain_class(model: nn.Module) -> type:
    """The model's own class under FSDP2's dynamic ``FSDP<cls>`` subclass."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


class RolloutPolicy:
    """The policy as a rollout generator sees it: the trained model itself, or (sharded) a replica.

    ``module`` is what to hand to a generator; :meth:`refresh` brings the replica up to date (a
    collective under FSDP: every process calls it; nothing happens for an unsharded model, which the
    generator already shares in memory).
    """

    def __init__(self, model, accelerator):
        self.model = model
        self.accelerator = accelerator
        self.replica = None
        """The unsharded copy (sharded policy only), built on first use."""

    @property
    def module(self):
        if not is_sharded(self.model):
            return self.accelerator.unwrap_model(self.model)
        if self.replica is None:
            self.replica = _make_replica(self.model)
        return self.replica

    def refresh_for(self, generator) -> None:
        """:meth:`refresh` when ``generator`` reads the weights: it samples from the replica, or it has its
        own copy to sync (overrides ``sync_weights`` / ``update_weights``). Every process must call it
        with generators of one type."""
        kind = type(generator)
        samples_from_replica = self.replica is not None and getattr(generator, "model", None) is self.replica
        if (samples_from_replica or kind.sync_weights is not Generator.sync_weights
                or kind.update_weights is not Generator.update_weights):
            self.refresh()

    def refresh(self) -> None:
        """Copy the current (gathered) weights into the replica; one all-gather per tensor."""
        if not is_sharded(self.model):
            return
        replica = self.module
        aliases: dict[str, list[str]] = {}  # first name -> every name of that tensor (a tied head)
        first_of: dict[int, str] = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            aliases.setdefault(first_of.setdefault(id(p), name), []).append(name)
        target = dict(replica.named_parameters(remove_duplicate=False)) | dict(replica.named_buffers())
        filled = set()
        with torch.no_grad():
            for name, full in full_tensors(self.model).items():
                for alias in aliases.get(name, [name]):
                    target[alias].copy_(full)
                    filled.add(alias)
        left = sorted(n for n, _ in replica.named_parameters(remove_duplicate=False) if n not in filled)
        if left:
            raise RuntimeError(f"rollout replica: no gathered weights for {left[:5]}")


def frozen_replica(model):
    """An unsharded, frozen copy of a sharded model's current weights (a collective: every process calls
    it); e.g. the KL reference of a later phase whose policy is already sharded."""
    policy = RolloutPolicy(model, None)
    policy.refresh()
    return policy.replica


def _make_replica(model):
    """An unsharded model of ``model``'s class and config on its device, weights filled by refresh()."""
    config = copy.deepcopy(model.config)
    with torch.device("meta"):
        replica = _plain_class(model)(config)
    device = next(model.parameters()).device
    replica.to_empty(device=device)
    dtype = next(model.parameters()).dtype
    replica.to(dtype)
    with torch.no_grad():  # non-persistent buffers (rotary frequencies) are not sharded: copy them as they are
        own = dict(model.named_buffers())
        for name, b in replica.named_buffers():
            b.copy_(own[name])
    if getattr(model, "generation_config", None) is not None:
        replica.generation_config = copy.deepcopy(model.generation_config)
    replica.eval().requires_grad_(False)
    return replica


# ---------------------------------------------------------------------------- the final model directory
def save_final(model, tokenizer, path: Path, accelerator) -> Path:
    """Write the model + tokenizer as a Hugging Face directory (main process), all processes wait.

    The directory is written under a temporary name and renamed into place, so ``path`` existing means
    the final model is complete (a re-run of a finished stage relies on it). A sharded model is
    gathered first (every process takes part; the main process writes)."""
    state = full_tensors(model, to_cpu=True, main_only=True, is_main=accelerator.is_main_process) \
        if is_sharded(model) else None
    if accelerator.is_main_process:
        tmp = path.with_name(f".tmp-{path.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        if state is None:
            save_pretrained_dir(accelerator.unwrap_model(model), tokenizer, tmp)
        else:
            save_pretrained_gathered(model, state, tmp)
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return path


def save_pretrained_gathered(model, state: dict[str, Any], path: Path) -> None:
    """``save_pretrained`` of a sharded model from its gathered ``state`` (main process only)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path, state_dict=state, safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
