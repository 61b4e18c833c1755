"""Stage bookkeeping of ``longrl pipeline``: stage names and directories, manifests, input checks."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longrl.config import Config, ConfigError
from longrl.data.records import DocQASample

log = logging.getLogger(__name__)

STAGE_INIT, STAGE_SFT, STAGE_EVAL = "init", "sft", "eval"
MANIFEST = "manifest.json"
CURRICULUM_END = "curriculum_end.json"
"""The curriculum sampler's state at the end of a phase (the next phase starts from it)."""


class StageError(RuntimeError):
    """A stage cannot run: an earlier stage is missing, or a completed stage was made from other inputs."""


@dataclass
class StageEvent:
    """What :func:`run_pipeline` reports to its ``on_event`` callback."""

    stage: str
    kind: str
    """'skip' (already complete), 'start', 'trained', 'evaluated', 'done'."""
    manifest: dict[str, Any]


def phase_names(cfg: Config) -> list[str]:
    return [ph.name or f"phase{i + 1}" for i, ph in enumerate(cfg.curriculum.phases)] or ["rl"]


def stage_names(cfg: Config) -> list[str]:
    return [STAGE_INIT] + ([STAGE_SFT] if cfg.sft.enabled else []) + phase_names(cfg) + [STAGE_EVAL]


def select_stages(names: list[str], from_stage: str | None, until_stage: str | None) -> tuple[int, int]:
    """Index range [start, stop) of the stages to run; unknown names raise ConfigError."""
    for flag, value in (("--from-stage", from_stage), ("--until-stage", until_stage)):
        if value is not None and value not in names:
            raise ConfigError(flag, f"unknown stage {value!r}; stages are {names}")
    start = names.index(from_stage) if from_stage else 0
    stop = names.index(until_stage) + 1 if until_stage else len(names)
    if stop <= start:
        raise ConfigError("--until-stage", f"{until_stage!r} comes before --from-stage {from_stage!r}")
    return start, stop


def samples_hash(samples: list[DocQASample]) -> str:
    """Content hash of a sample list (ids, texts, answers, token counts), order included."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.source, s.id, s.task, s.document, s.question, s.answers, s.n_tokens]).encode())
    return h.hexdigest()[:16]


def stage_dir(cfg: Config, name: str) -> Path:
    return Path(cfg.output_dir) / "stages" / name


def read_manifest(path: Path) -> dict[str, Any] | None:
    f = path / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        log.warning("%s is unreadable; the stage will run again", f)
        return None


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Atomic write (temp file + rename), so a kill never leaves half a manifest."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    tmp.replace(path / MANIFEST)


def check_inputs(name: str, manifest: dict[str, Any], cfg_hash: str, data_hashes: dict[str, str]) -> None:
    """Raise StageError when a stage on disk was made from another config or other data."""
    if manifest.get("config_hash") != cfg_hash:
        raise StageError(f"stage {name!r} in {manifest.get('dir')} was run with another config "
                         f"(hash {manifest.get('config_hash')} != {cfg_hash}); use a new output_dir, or "
                         f"--from-stage {name} to run it again")
    changed = [k for k, v in data_hashes.items() if manifest.get("data_hashes", {}).get(k, v) != v]
    if changed:
        raise StageError(f"stage {name!r} was run on other data ({', '.join(changed)} changed); use a new "
                         f"output_dir, or --from-stage {name}")
