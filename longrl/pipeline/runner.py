"""``Pipeline``: runs the selected stages in order, skipping completed ones; the final ``eval`` stage."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from longrl.eval.harness import InProcessBackend, evaluate_benchmarks, load_samples
from longrl.locations import check_model_config
from longrl.pipeline.report import behaviour_report, depth_table, markdown_table
from longrl.pipeline.stages import (
    STAGE_EVAL,
    STAGE_INIT,
    check_inputs,
    select_stages,
    stage_dir,
    write_manifest,
)
from longrl.pipeline.training import TrainingStages

log = logging.getLogger(__name__)


class Pipeline(TrainingStages):
    """Runs the stages of one config; see :mod:`longrl.pipeline`."""

    def run(self, from_stage: str | None = None, until_stage: str | None = None) -> list[dict[str, Any]]:
        """Run the selected stages; returns the manifests of every stage that is complete afterwards."""
        check_model_config(self.cfg, required=False)
        start, stop = select_stages(self.names, from_stage, until_stage)
        if from_stage is not None:
            self.discard(self.names[start:])
        Path(self.cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.cfg.output_dir) / "config.yaml").write_text(self.cfg.to_yaml())
        for name in self.names[start:stop]:
            self.run_stage(name)
        return [m for m in (self.manifest(n) for n in self.names) if m and m.get("status") == "complete"]

    def discard(self, names: list[str]) -> None:
        for name in names:
            d = stage_dir(self.cfg, name)
            if d.exists():
                log.info("--from-stage: removing %s", d)
                shutil.rmtree(d)

    def run_stage(self, name: str) -> dict[str, Any]:
        m = self.manifest(name)
        if m and m.get("status") == "complete":
            if name != STAGE_INIT and self.data is None:
                self.ensure_data(self.load_tokenizer(m["output_model"] or m["input_model"]))
            check_inputs(name, m, self.cfg_hash, self.data_hashes)
            self._emit(name, "skip", m)
            return m
        if name == STAGE_INIT:
            return self.run_init(m)
        if name == STAGE_EVAL:
            return self.run_eval(m)
        return self.run_training(name, m)

    def run_eval(self, m: dict[str, Any] | None) -> dict[str, Any]:
        """The final stage: the accuracy table over stages, plus the DocQA benchmarks when configured."""
        name = STAGE_EVAL
        input_model = self.previous_model(name)
        d = stage_dir(self.cfg, name)
        m = self.new_manifest(name, input_model)
        m["output_model"] = input_model
        self._emit(name, "start", m)
        prior = [self.manifest(n) for n in self.names[:-1]]
        rows = [(x["stage"], x["eval"]) for x in prior if x and x.get("eval")]
        m["metrics"] = {"table": rows}
        if self.accelerator.is_main_process and rows:
            d.mkdir(parents=True, exist_ok=True)
            (d / "table.md").write_text(markdown_table(rows) + "\n")
            depth = depth_table(self.cfg)
            if depth:
                (d / "depth.md").write_text(depth + "\n")
            m["metrics"]["behaviours"] = behaviour_report(self.cfg, d, d / "behaviours.png")["per_stage"]
        if self.cfg.eval.benchmarks:
            m["metrics"]["benchmarks"] = self.benchmark_eval(input_model, d)
        m["status"] = "complete"
        m["finished"] = time.time()
        if self.accelerator.is_main_process:
            write_manifest(d, m)
        self._emit(name, "done", m)
        return m

    def benchmark_eval(self, model_path: str, out: Path) -> dict[str, Any]:
        """The DocQA benchmarks of ``eval.benchmarks``, in process, through the eval harness."""
        model, tokenizer = self.load_model(model_path, trainable=False)
        backend = InProcessBackend(model, tokenizer, seed=self.cfg.seed)
        summary, _ = evaluate_benchmarks(load_samples(self.cfg.eval), self.cfg.eval, backend, tokenizer,
                                         out / "benchmarks", model_path)
        return summary.get("benchmarks", summary)
