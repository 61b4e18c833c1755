"""What every stage of a pipeline run shares: the config, the accelerator, models, data and manifests."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from longrl.config import Config, ConfigError
from longrl.data.prepare import write_jsonl_rows
from longrl.eval.heldout import evaluate_sets
from longrl.models import _pretrained_location, hf_progress_bars_off, load_policy, load_tokenizer
from longrl.pipeline.data import PipelineData, load_data, write_data
from longrl.pipeline.report import progress_bar
from longrl.pipeline.stages import (
    StageError,
    StageEvent,
    read_manifest,
    stage_dir,
    stage_names,
    write_manifest,
)
from longrl.train.runtime import default_accelerator

log = logging.getLogger(__name__)


class PipelineBase:
    """State and helpers of one pipeline run; :class:`longrl.pipeline.Pipeline` adds the stages."""

    def __init__(self, cfg: Config, on_event=None, progress: bool = True):
        self.cfg = cfg
        self.names = stage_names(cfg)
        unknown = [n for n in cfg.pipeline.eval_skip if n not in self.names]
        if unknown:
            raise ConfigError("pipeline.eval_skip", f"names no stage of this run: {unknown}; the stages are "
                              f"{', '.join(self.names)}", cfg.source_of("pipeline.eval_skip"))
        self.cfg_hash = cfg.hash()
        self.on_event = on_event
        self.progress = progress
        self.data: PipelineData | None = None
        self.data_hashes: dict[str, str] = {}
        self._accelerator = None

    @property
    def accelerator(self):
        if self._accelerator is None:
            self._accelerator = default_accelerator()
        return self._accelerator

    def manifest(self, name: str) -> dict[str, Any] | None:
        return read_manifest(stage_dir(self.cfg, name))

    def _emit(self, name: str, kind: str, manifest: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(StageEvent(name, kind, manifest))

    def previous_model(self, name: str) -> str:
        """The model the stage before ``name`` wrote (it must be complete)."""
        i = self.names.index(name)
        prev = self.names[i - 1]
        m = self.manifest(prev)
        if not m or m.get("status") != "complete":
            raise StageError(f"stage {name!r} needs stage {prev!r} complete; run without --from-stage first")
        return m["output_model"]

    def load_model(self, path: str, trainable: bool = True):
        model_cfg = dataclasses.replace(self.cfg.model, path=path,
                                        tokenizer=self.cfg.model.tokenizer if path == self.cfg.model.path else "")
        with hf_progress_bars_off():
            model, tokenizer = load_policy(model_cfg, trainable=trainable)
        return model.to(self.accelerator.device), tokenizer

    def load_tokenizer(self, path: str):
        tok = self.cfg.model.tokenizer if path == self.cfg.model.path and self.cfg.model.tokenizer else path
        return load_tokenizer(*_pretrained_location(tok))

    def ensure_data(self, tokenizer) -> PipelineData:
        if self.data is None:
            self.data = load_data(self.cfg, tokenizer)
            self.data_hashes = self.data.hashes()
            if self.accelerator.is_main_process:
                write_data(self.data, Path(self.cfg.output_dir) / "data")
        return self.data

    def new_manifest(self, name: str, input_model: str) -> dict[str, Any]:
        return {"stage": name, "status": "running", "dir": str(stage_dir(self.cfg, name)),
                "config_hash": self.cfg_hash, "data_hashes": self.data_hashes, "input_model": input_model,
                "output_model": "", "metrics": {}, "eval": None, "started": time.time(), "train_wall_s": 0.0,
                "eval_wall_s": 0.0}

    def finish(self, name: str, m: dict[str, Any], model, tokenizer) -> dict[str, Any]:
        """Evaluate the stage's model on the held-out sets (when configured) and mark it complete."""
        evaluate = self.cfg.pipeline.stage_eval and name not in self.cfg.pipeline.eval_skip
        if evaluate and self.data and self.data.heldout and m.get("eval") is None:
            t0 = time.perf_counter()
            table, records = self.evaluate(model, tokenizer, name)
            m["eval"] = table
            m["eval_wall_s"] = time.perf_counter() - t0
            if self.accelerator.is_main_process:
                write_jsonl_rows(records, stage_dir(self.cfg, name) / "heldout_predictions.jsonl")
            self._emit(name, "evaluated", m)
        m["status"] = "complete"
        m["finished"] = time.time()
        if self.accelerator.is_main_process:
            write_manifest(stage_dir(self.cfg, name), m)
        self._emit(name, "done", m)
        return m

    def evaluate(self, model, tokenizer, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The held-out accuracy table of ``model`` and its scored generations (:mod:`longrl.eval.heldout`)."""
        e, p = self.cfg.eval, self.cfg.pipeline
        total = sum(len(v) for v in self.data.heldout.values()) * e.k
        with progress_bar(f"eval {name}", total, self.progress and self.accelerator.is_main_process) as advance:
            return evaluate_sets(model, tokenizer, self.data.heldout, e, stage_dir(self.cfg, name) / "heldout",
                                 batch_size=p.eval_batch_size, seed=self.cfg.seed,
                                 require_think=self.cfg.reward.require_think, token_budget=p.eval_batch_tokens,
                                 on_batch=advance)
