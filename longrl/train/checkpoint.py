"""Atomic, verified training checkpoints.

Layout of ``<root>/step-00000042/``:

* ``model/``            ``save_pretrained`` output (safetensors; LoRA adapters for a peft model), so any
                        checkpoint loads as a Hugging Face model directory;
* ``optimizer.pt``, ``scheduler.pt``;
* ``trainer_state.pt``  step plus the caller's state (sampler / pool ``state_dict``s, counters);
* ``rng_rank{r}.pt``    Python / torch / numpy RNG states of every process;
* ``manifest.json``     written last: step, and size + sha256 of every file above.

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
from pathlib import Path
from typing import Any

import torch

from longrl.train.optim import rng_state, set_rng_state

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
    """Write checkpoint ``step`` atomically (every process must call it); prune to ``keep`` newest."""
    root = Path(root)
    tmp = root / f"{TMP_PREFIX}{PREFIX}{step:08d}"
    main = accelerator is None or accelerator.is_main_process
    rank = accelerator.process_index if accelerator is not None else 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(accelerator)
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    _barrier(accelerator)
    final = step_dir(root, step)
    if main:
        _save_model_quietly(_unwrap(model, accelerator), tmp / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"step": step, "state": state or {}}, tmp / "trainer_state.pt")
        _write_manifest(tmp, step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _prune(root, keep)
    _barrier(accelerator)
    return final


def _save_model_quietly(model, path: Path) -> None:
    """``save_pretrained`` without transformers' per-call progress bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path, safe_serialization=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


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

    The returned dict has ``step`` and ``state`` (what was passed to :func:`save_checkpoint`).
    """
    path = Path(path)
    verify_checkpoint(path)
    load_model_weights(_unwrap(model, accelerator), path / "model")
    if optimizer is not None and (path / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    if scheduler is not None and (path / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rank = accelerator.process_index if accelerator is not None else 0
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        log.warning("%s has no RNG state for rank %d (different process count?); RNG not restored", path, rank)
    return torch.load(path / "trainer_state.pt", weights_only=False)
