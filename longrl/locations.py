"""Model and tokenizer locations, checked before any work.

``model.path``, ``model.tokenizer``, ``eval --model-path`` and ``prepare --tokenizer`` take a local
directory, a local ``.gguf`` file, or a Hugging Face hub id. A value that is clearly a filesystem path
(absolute, ``./``, ``../``, ``~``, a backslash, more than one ``/``, or a ``.gguf`` name) must exist;
a hub-id-shaped value (``name`` or ``namespace/name``) that is not a local path is left to the hub,
except when the hub is switched off (``HF_HUB_OFFLINE``) and the Hugging Face cache has nothing for it.
Either way the error is a :class:`~longrl.config.ConfigError` naming the key and where its value came
from, raised before data is read or a directory is made, instead of a transformers traceback later.
"""

from __future__ import annotations

import os
from pathlib import Path

from longrl.config import ConfigError

MODEL_FILES = ("config.json", "adapter_config.json")
"""A model directory holds one of these (a full model, or a peft adapter)."""
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
"""A tokenizer directory holds one of these."""


def looks_like_hub_id(value: str) -> bool:
    """True for a valid hub repo id (``gpt2``, ``Qwen/Qwen2.5-7B``); a ``.gguf`` name is always local."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.endswith(".gguf"):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str, filename: str) -> bool:
    from huggingface_hub import constants, try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=constants.HF_HUB_CACHE), str)


def _check_existing(p: Path, value: str, kind: str) -> str | None:
    """What is wrong with an existing path for ``kind`` ('model' or 'tokenizer'), or None."""
    wanted = MODEL_FILES if kind == "model" else TOKENIZER_FILES
    if p.is_dir():
        if not any((p / f).is_file() for f in wanted):
            return f"{value} is a directory with no {' or '.join(wanted)} (not a Hugging Face {kind} directory)"
        return None
    if p.suffix != ".gguf":
        return f"{value} is a file; expected a Hugging Face {kind} directory or a .gguf file"
    return None


def check_location(value: str, key: str, kind: str = "model", source: str | None = None) -> None:
    """Raise ConfigError(key) when ``value`` cannot name a ``kind`` ('model' or 'tokenizer') location.

    Empty values pass (the caller decides whether one is required).
    """
    if not value:
        return
    p = Path(value).expanduser()
    if p.exists():
        problem = _check_existing(p, value, kind)
    elif not looks_like_hub_id(value):
        problem = f"{value} does not exist (and is not a hub id)"
    elif _hub_offline() and not _in_hub_cache(value, (MODEL_FILES if kind == "model" else TOKENIZER_FILES)[0]):
        from huggingface_hub import constants

        problem = (f"{value} is not a local path, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                   f"while the hub is off (HF_HUB_OFFLINE)")
    else:
        problem = None
    if problem:
        raise ConfigError(key, problem, source)


def check_model_config(cfg, *, required: bool = True, path: bool = True) -> None:
    """Check ``model.path`` (unless ``path`` is False; empty is an error when ``required``) and
    ``model.tokenizer`` of a :class:`~longrl.config.Config`, naming where each value came from."""
    if path:
        if required and not cfg.model.path:
            raise ConfigError("model.path", "is required (a Hugging Face id, a local directory or a .gguf file)",
                              cfg.source_of("model.path"))
        check_location(cfg.model.path, "model.path", "model", cfg.source_of("model.path"))
    check_location(cfg.model.tokenizer, "model.tokenizer", "tokenizer", cfg.source_of("model.tokenizer"))
