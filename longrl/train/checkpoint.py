"""Atomic, verified training checkpoints.

Layout of ``<root>/step-00000042/``:

* ``model/``            ``save_pretrained`` output (safetensors; LoRA adapters for a peft model), so any
                        checkpoint loads as a Hugging Face model directory;
* ``optimizer.pt``, ``scheduler.pt``;
* ``trainer_state.pt``  step plus the caller's state (sampler / pool ``state_dict``s, counters);
* ``rng_rank{r}.pt``    Python / torch / numpy RNG states of every process;
* ``manifest.json``     written last: step, and size + sha256 of every file above.

A sharded (FSDP2) run writes the same layout from tensors gathered on the main process; its
``optimizer.pt`` is keyed by parameter name (see :func:`save_checkpoint`).

A checkpoint is written into ``<root>/.tmp-step-...`` and renamed into place only when complete, so a
kill at any moment leaves either the old set of checkpoints or the new one. ``latest_checkpoint`` checks
each candidate against its manifest (newest first) and falls back, with a logged reason, past partial
or corrupt ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from longrl.config import Config, ConfigError
from longrl.models import hf_progress_bars_off
from longrl.train.optim import rng_state, set_rng_state
from longrl.train.runtime import full_tensors, is_sharded, save_pretrained_gathered

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"
HASH_LIMIT_BYTES = 1 << 30
"""Files larger than this are verified by size only (hashing a 60 GB shard at every resume is slow)."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing files, truncated, or does not match its manifest."""


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Completed-looking checkpoint directories (renamed into place), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: p.name)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    return {"size": size, "sha256": _sha256(path) if size <= HASH_LIMIT_BYTES else ""}


def _write_manifest(tmp: Path, step: int) -> None:
    files = {str(p.relative_to(tmp)): _file_entry(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    with (tmp / MANIFEST).open("w") as f:
        json.dump({"format": 1, "step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def verify_checkpoint(path: str | Path) -> int:
    """Return the checkpoint's step, or raise :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (partial write?)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable {MANIFEST}: {e}") from None
    for rel, entry in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{path}: missing file {rel}")
        if f.stat().st_size != entry["size"]:
            raise CheckpointError(f"{path}: {rel} has {f.stat().st_size} bytes, manifest says {entry['size']}")
        if entry["sha256"] and _sha256(f) != entry["sha256"]:
            raise CheckpointError(f"{path}: {rel} does not match its sha256 (corrupt)")
    return int(manifest["step"])


def latest_checkpoint(root: str | Path) -> Path | None:
    """Newest checkpoint under ``root`` that verifies; corrupt ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            log.warning("ignoring checkpoint: %s; falling back to the previous one", e)
    return None


def _unwrap(model, accelerator):
    return accelerator.unwrap_model(model) if accelerator is not None else model


def _barrier(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def save_checkpoint(root: str | Path, step: int, *, model, optimizer=None, scheduler=None,
                    state: dict[str, Any] | None = None, accelerator=None, keep: int = 2,
                    tokenizer=None) -> Path:
    """Write checkpoint ``step`` atomically (every process must call it); prune to ``keep`` newest.

    A sharded (FSDP2) model and its optimizer are gathered first, every process taking part, into
    whole tensors on the main process's CPU, which writes them in the unsharded layout (``model/`` a
    Hugging Face directory; ``optimizer.pt`` the full optimizer state keyed by parameter name)."""
    root = Path(root)
    tmp = root / f"{TMP_PREFIX}{PREFIX}{step:08d}"
    main = accelerator is None or accelerator.is_main_process
    rank = accelerator.process_index if accelerator is not None else 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(accelerator)
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    sharded = is_sharded(model)
    weights = full_tensors(model, to_cpu=True, main_only=True, is_main=main) if sharded else None
    optim_state = _full_optimizer_state(model, optimizer) if sharded and optimizer is not None else None
    _barrier(accelerator)
    final = step_dir(root, step)
    if main:
        if sharded:
            save_pretrained_gathered(model, weights, tmp / "model")
        else:
            _save_model_quietly(_unwrap(model, accelerator), tmp / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        if optimizer is not None:
            torch.save(optim_state if sharded else optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"step": step, "state": state or {}}, tmp / "trainer_state.pt")
        _write_manifest(tmp, step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _prune(root, keep)
    _barrier(accelerator)
    return final


def _full_optimizer_state(model, optimizer) -> dict[str, Any]:
    """The whole optimizer state of a sharded model, keyed by parameter name, on the main process's CPU
    (``{}`` elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not optimizer.state:
        # before the first update: no tensors to gather. (get_optimizer_state_dict would make them with an
        # lr-0 step of zero gradients, which counts as AdamW step 1 and changes the bias correction after.)
        return optimizer.state_dict()
    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _save_model_quietly(model, path: Path) -> None:
    """``save_pretrained`` without transformers' per-call progress bar."""
    with hf_progress_bars_off():
        model.save_pretrained(path, safe_serialization=True)


def _prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _load_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_model_weights(model, path: str | Path) -> None:
    """Load a ``save_pretrained`` directory's weights into ``model`` in place (tied weights allowed)."""
    path = Path(path)
    state = _load_safetensors_dir(path)
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
        return
    result = model.load_state_dict(state, strict=False)
    tied = _tied_names(model)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]})")


def _tied_names(model) -> set[str]:
    """Parameter names that alias another parameter (e.g. a tied lm_head)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.update({name, seen[id(p)]})
        seen.setdefault(id(p), name)
    return tied


def load_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None,
                    accelerator=None) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this process's RNG; return the trainer state dict.

    The returned dict has ``step`` and ``state`` (what was passed to :func:`save_checkpoint`). A
    sharded (FSDP2) model is loaded from the main process's read of the files, each process keeping its
    shards (every process must call this).
    """
    path = Path(path)
    verify_checkpoint(path)
    if is_sharded(model):
        _load_sharded(path, model, optimizer, accelerator)
    else:
        load_model_weights(_unwrap(model, accelerator), path / "model")
        if optimizer is not None and (path / "optimizer.pt").is_file():
            state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
            if _keyed_by_name(state):
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(_unwrap(model, accelerator), optimizer, state,
                                         options=StateDictOptions(full_state_dict=True))
            else:
                optimizer.load_state_dict(state)
    if scheduler is not None and (path / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rank = accelerator.process_index if accelerator is not None else 0
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        log.warning("%s has no RNG state for rank %d (different process count?); RNG not restored", path, rank)
    return torch.load(path / "trainer_state.pt", weights_only=False)


def _keyed_by_name(optimizer_state: dict[str, Any]) -> bool:
    """True for a full optimizer state keyed by parameter name (written by a sharded run)."""
    return any(isinstance(k, str) for k in optimizer_state.get("state", {}))


def _load_sharded(path: Path, model, optimizer, accelerator) -> None:
    """Weights and optimizer of a sharded model: read by the main process, broadcast, kept as shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    main = accelerator is None or accelerator.is_main_process
    weights: dict[str, torch.Tensor] = {}
    if main:
        weights = _load_safetensors_dir(path / "model")
        for group in _tied_groups(model):  # a tied head is saved once; every name must be there to broadcast
            present = next((n for n in group if n in weights), None)
            if present is None:
                raise CheckpointError(f"{path / 'model'}: none of the tied weights {sorted(group)}")
            weights.update({n: weights[present] for n in group})
        wanted = set(model.state_dict())
        missing, unexpected = sorted(wanted - set(weights)), sorted(set(weights) - wanted)
        if missing or unexpected:
            raise CheckpointError(f"{path / 'model'}: weights do not fit the model (missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]})")
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    if optimizer is None or not (path / "optimizer.pt").is_file():
        return
    state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False) if main else {}
    kind = ("empty" if not state.get("state") else "by-name" if _keyed_by_name(state) else "by-position") if main else ""
    kind = _from_main(kind, accelerator)
    if kind == "empty":  # saved before the first update (no tensors): every process reads the hyper-parameters
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        return
    if kind == "by-position":
        raise CheckpointError(f"{path}: optimizer.pt was written by an unsharded run (keyed by position); "
                              f"resume it without FSDP")
    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _from_main(value, accelerator):
    """The main process's ``value`` (picklable) on every process."""
    if accelerator is None or accelerator.num_processes < 2:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def _tied_groups(model) -> list[set[str]]:
    """Sets of parameter names that alias one tensor (a tied LM head and embedding)."""
    by_id: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), set()).add(name)
    return [names for names in by_id.values() if len(names) > 1]


# ---------------------------------------------------------------------------- the run's config, on resume
RUN_CONFIG = "config.yaml"
"""The resolved config of a training run, written in its run directory and compared on resume."""

HARMLESS_CONFIG_KEYS = (
    "output_dir", "save_every", "keep_checkpoints", "logging", "eval", "pipeline.stage_eval", "pipeline.eval_skip",
    "pipeline.eval_batch_size", "pipeline.eval_batch_tokens", "pipeline.threads", "data.cache_dir",
    "data.token_count_workers", "rl.micro_token_budget", "rl.logprob_chunk", "sft.micro_token_budget",
    "sft.loss_chunk", "rollout.endpoint", "rollout.max_concurrency", "rollout.timeout_s", "rollout.max_retries",
    "rollout.backoff_s", "rollout.max_backoff_s", "rollout.sync_dir", "reward.judge.endpoint", "reward.judge.api_key_env", "reward.judge.concurrency",
    "reward.judge.timeout_s", "reward.judge.max_retries", "reward.judge.backoff_s", "reward.judge.max_backoff_s",
    "reward.judge.cache_path", "reward.judge.batch_size",
)
"""Keys (and sections) whose change on resume leaves the training trajectory as it was: where files go,
logging and progress, checkpoint cadence, evaluation, and memory / transport knobs (micro-batch token
budgets and chunk sizes change results only by floating-point summation order; endpoints, timeouts,
retries and concurrency only how requests travel). Any other change is refused on resume unless
``--allow-config-change``."""


def is_harmless_change(key: str) -> bool:
    """True when changing ``key`` (a dotted config path) on resume does not alter the training trajectory."""
    return any(key == k or key.startswith((k + ".", k + "[")) for k in HARMLESS_CONFIG_KEYS)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs (missing = None), sorted by key."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _describe(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}" for k, a, b in changes)


def check_run_config(run_dir: str | Path, config: dict[str, Any], *, allow_change: bool = False,
                     source_of=None) -> list[str]:
    """Compare ``config`` with the one saved when the run in ``run_dir`` started (call it only when resuming).

    Raises :class:`~longrl.config.ConfigError` (naming the first changed key, and where its value came
    from through ``source_of(key)``) when a change alters the training trajectory (see
    :data:`HARMLESS_CONFIG_KEYS`) and ``allow_change`` is False. Returns lines describing what changed.
    """
    import yaml

    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return []
    saved = yaml.safe_load(path.read_text()) or {}
    changes = config_changes(saved, config)
    # a key the saved config predates (a section added to longrl since), left at its default, is no change
    old, defaults = _flatten(saved), _flatten(Config().to_dict())
    changes = [c for c in changes if not (c[0] not in old and c[0] in defaults and c[2] == defaults[c[0]])]
    altering = [c for c in changes if not is_harmless_change(c[0])]
    if altering and not allow_change:
        key = altering[0][0]
        raise ConfigError(key, f"changed since the run in {run_dir} started ({_describe(altering)}); this alters the "
                               f"training trajectory. Resume with the config saved in {path}, use another "
                               f"output_dir, or pass --allow-config-change to resume with the new values",
                          source_of(key) if source_of else None)
    lines = []
    if altering:
        lines.append(f"config changed since the run started, allowed by --allow-config-change: {_describe(altering)}")
    harmless = [c for c in changes if is_harmless_change(c[0])]
    if harmless:
        lines.append(f"config changed since the run started (does not alter training): {_describe(harmless)}")
    return lines


def save_run_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    """Write the run's resolved config (atomically; not at all when unchanged) for :func:`check_run_config`."""
    import yaml

    path = Path(run_dir) / RUN_CONFIG
    text = yaml.safe_dump(config, sort_keys=False)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(RUN_CONFIG + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def open_run(run_dir: str | Path, config: dict[str, Any], *, allow_change: bool, source_of=None,
             main: bool = True) -> Path | None:
    """Before any training: the newest valid checkpoint of the run in ``run_dir`` (None = a fresh start).

    When there is one, the config is checked against the saved one (:func:`check_run_config`) and what
    changed is printed; then (main process) the config is saved as the run's.
    """
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    notes = check_run_config(run_dir, config, allow_change=allow_change, source_of=source_of) if ckpt else []
    if main:
        for line in notes:
            print(f"{run_dir}: {line}", file=sys.stderr)
        save_run_config(run_dir, config)
    return ckpt


def announce_resume(run_dir: str | Path, step: int, ckpt: Path, main: bool = True) -> None:
    """The console line of a resumed run."""
    if main:
        print(f"{run_dir}: resumed from step {step} (checkpoint {ckpt})", file=sys.stderr, flush=True)
