"""``longrl pipeline CONFIG``: initial policy -> warm-up SFT -> curriculum RL phases -> evaluation.

Stages, in order: ``init`` (the initial policy: ``model.path``, or a tokenizer + Qwen2 model built
from scratch on synthetic texts when it is empty), ``sft`` (when ``sft.enabled``), one stage per
curriculum phase (``curriculum.phases[k].name``, default ``phase1`` ... ``phaseK``), and ``eval``.

Each stage works in ``<output_dir>/stages/<name>/`` and ends by writing ``manifest.json``: status,
config hash, data hashes, the model it started from and the one it wrote, its metrics and (with
``pipeline.stage_eval``) the held-out accuracy of its model. Re-running the command skips completed
stages, finishes a stage whose training ended but whose evaluation did not, and resumes a stage
from its newest checkpoint. ``--from-stage S`` discards S and the later stages and runs from S;
``--until-stage S`` stops after S.

Phase k's curriculum sampler (fresh samples of its length range plus the retrospective pool) starts
from the sampler state saved at the end of phase k-1 and calls ``CurriculumSampler.advance()``,
whose summary (pool size, drops, difficulty histogram, per-source counts) goes into the manifest.
"""

from __future__ import annotations

from longrl.pipeline.base import PipelineBase
from longrl.pipeline.data import (
    PipelineData,
    file_data,
    load_data,
    phase_data,
    read_heldout,
    synthetic_data,
    write_data,
)
from longrl.pipeline.init import PRETRAIN_METRICS, build_policy_from_scratch
from longrl.pipeline.report import (
    behaviour_report,
    depth_table,
    markdown_table,
    ordered_sets,
    percent,
    pool_composition,
    pool_line,
    print_event,
    progress_bar,
)
from longrl.pipeline.runner import Pipeline
from longrl.pipeline.stages import (
    CURRICULUM_END,
    MANIFEST,
    STAGE_EVAL,
    STAGE_INIT,
    STAGE_SFT,
    StageError,
    StageEvent,
    check_inputs,
    phase_names,
    read_manifest,
    samples_hash,
    select_stages,
    stage_dir,
    stage_names,
    write_manifest,
)
from longrl.pipeline.training import TrainingStages

__all__ = [
    "CURRICULUM_END", "MANIFEST", "PRETRAIN_METRICS", "Pipeline", "PipelineBase", "PipelineData",
    "STAGE_EVAL", "STAGE_INIT", "STAGE_SFT", "StageError", "StageEvent", "TrainingStages", "behaviour_report",
    "build_policy_from_scratch", "check_inputs", "depth_table", "file_data", "load_data", "markdown_table",
    "ordered_sets", "percent", "phase_data", "phase_names", "pool_composition", "pool_line", "print_event",
    "progress_bar", "read_heldout", "read_manifest", "samples_hash", "select_stages", "stage_dir", "stage_names",
    "synthetic_data", "write_data", "write_manifest",
]
