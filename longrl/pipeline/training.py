"""The stages that make a model: ``init`` (the initial policy), ``sft`` and one stage per curriculum phase."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from longrl.curriculum.samplers import CurriculumSampler
from longrl.models import export_gguf_as_hf_dir
from longrl.pipeline.base import PipelineBase
from longrl.pipeline.init import PRETRAIN_METRICS, build_policy_from_scratch
from longrl.pipeline.report import pool_line
from longrl.pipeline.stages import (
    CURRICULUM_END,
    STAGE_INIT,
    STAGE_SFT,
    StageError,
    check_inputs,
    phase_names,
    stage_dir,
    write_manifest,
)
from longrl.train.rl import make_reward_fn, train_rl
from longrl.train.sft import train_sft

log = logging.getLogger(__name__)


class TrainingStages(PipelineBase):
    """``run_init`` and ``run_training`` (SFT or a curriculum phase), each ending in :meth:`finish`."""

    def run_init(self, m: dict[str, Any] | None) -> dict[str, Any]:
        d = stage_dir(self.cfg, STAGE_INIT)
        if self.cfg.model.path.endswith(".gguf"):
            # de-quantised once into an ordinary checkpoint that every later stage loads and saves
            path = str(d / "final")
            if not (d / "final" / "config.json").is_file() and self.accelerator.is_main_process:
                export_gguf_as_hf_dir(self.cfg.model.path, d / "final", dtype=self.cfg.model.dtype)
            self.accelerator.wait_for_everyone()
        elif self.cfg.model.path:
            path = self.cfg.model.path
        else:
            path = str(d / "final")
            if not (d / "final" / "config.json").is_file() and self.accelerator.is_main_process:
                build_policy_from_scratch(self.cfg, d / "final", progress=self.progress)
            self.accelerator.wait_for_everyone()
        model, tokenizer = self.load_model(path, trainable=False)
        self.ensure_data(tokenizer)
        m = self.new_manifest(STAGE_INIT, self.cfg.model.path or path)   # a GGUF file: the file, not its export
        m["output_model"] = path
        m["metrics"] = {"model/parameters": sum(p.numel() for p in model.parameters()),
                        "model/vocab_size": len(tokenizer)}
        pretrain_metrics = Path(path) / PRETRAIN_METRICS
        if pretrain_metrics.is_file():
            m["metrics"].update(json.loads(pretrain_metrics.read_text()))
        self._emit(STAGE_INIT, "start", m)
        return self.finish(STAGE_INIT, m, model, tokenizer)

    def run_training(self, name: str, m: dict[str, Any] | None) -> dict[str, Any]:
        d = stage_dir(self.cfg, name)
        if m and m.get("status") == "trained":
            model, tokenizer = self.load_model(m["output_model"], trainable=False)
            self.ensure_data(tokenizer)
            check_inputs(name, m, self.cfg_hash, self.data_hashes)
            return self.finish(name, m, model, tokenizer)
        input_model = self.previous_model(name)
        model, tokenizer = self.load_model(input_model)
        self.ensure_data(tokenizer)
        m = self.new_manifest(name, input_model)
        self._emit(name, "start", m)
        t0 = time.perf_counter()
        if name == STAGE_SFT:
            m["metrics"] = self.train_sft(model, tokenizer, d)
        else:
            m["metrics"], m["curriculum"] = self.train_phase(name, model, tokenizer, d)
        m["train_wall_s"] = time.perf_counter() - t0
        m["output_model"] = str(d / "final")
        m["status"] = "trained"
        if self.accelerator.is_main_process:
            write_manifest(d, m)
        self._emit(name, "trained", m)
        return self.finish(name, m, model, tokenizer)

    def train_sft(self, model, tokenizer, d: Path) -> dict[str, Any]:
        c = self.cfg
        res = train_sft(model, tokenizer, self.data.sft, c.sft, run_dir=d, seed=c.seed, logging_cfg=c.logging,
                        save_every=c.save_every, keep_checkpoints=c.keep_checkpoints, accelerator=self.accelerator)
        return {"sft/steps": res.steps, "sft/train_loss": res.train_loss, "sft/heldout_loss": res.heldout_loss,
                "sft/skipped_long": res.skipped_long, "sft/examples": len(self.data.sft)}

    def curriculum_sampler(self, phase: int) -> tuple[CurriculumSampler, dict[str, Any]]:
        """The curriculum sampler positioned at the start of ``phase`` (advancing from the previous one)."""
        c = self.cfg
        sampler = CurriculumSampler.for_run(self.data.rl, c, phase_samples=self.data.phases)
        if phase == 0:
            return sampler, {}
        prev = stage_dir(c, phase_names(c)[phase - 1]) / CURRICULUM_END
        if not prev.is_file():
            raise StageError(f"{prev} is missing: phase {phase} starts from the end state of phase {phase - 1}")
        sampler.load_state_dict(json.loads(prev.read_text()))
        return sampler, sampler.advance()

    def train_phase(self, name: str, model, tokenizer, d: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        sampler, transition = self.curriculum_sampler(phase_names(self.cfg).index(name))
        if transition:
            log.info("phase %s starts with retrospective pool: %s", name, pool_line(transition))
        res = train_rl(model, tokenizer, sampler, make_reward_fn(self.cfg.reward), self.cfg, run_dir=d,
                       phase=sampler.spec, on_accuracies=sampler.record, accelerator=self.accelerator)
        if self.accelerator.is_main_process:
            (d / CURRICULUM_END).write_text(json.dumps(sampler.state_dict()))
        metrics = {k: v for k, v in res.last_metrics.items() if isinstance(v, int | float)}
        metrics["rl/steps"] = res.steps
        metrics["rl/skipped_updates"] = res.skipped_updates
        return metrics, {"transition": transition, "end": sampler.summary()}
