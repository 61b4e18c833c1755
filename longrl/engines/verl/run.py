"""``longrl pipeline CONFIG --engine verl``: the curriculum phases run as verl jobs.

The stages are the own pipeline's (``init``, ``sft``, phases, ``eval``, manifests, skip / resume);
``init`` and ``sft`` run on the own trainer, each phase on verl:

1. **data** -- the curriculum sampler of the phase (fresh samples of its length range plus the
   retrospective pool carried from the previous phase, the same ``CurriculumSampler`` and config as the
   own trainer) draws the batches the phase will train on, in order; longrl writes them as the phase's
   verl parquet (``stages/<phase>/verl/train.parquet``, read unshuffled), and the resolved config the
   reward function reads (``stages/<phase>/verl/longrl.yaml``);
2. **train** -- ``python -m verl.trainer.main_ppo <overrides>`` (:mod:`.mapping`); verl checkpoints to
   ``verl/checkpoints`` and dumps rollouts with scores to ``verl/rollouts``. Re-running resumes from
   verl's last checkpoint (``trainer.resume_mode=auto``); a phase whose last step is checkpointed is
   not launched again;
3. **hand-over** -- verl's model merger turns the last checkpoint into an HF model at
   ``stages/<phase>/final``, the next stage's model;
4. **difficulty** -- the phase's rollout dumps are matched back to samples and recorded in the
   retrospective pool (:func:`record_dumps`); the sampler state goes to ``curriculum_end.json``, which
   the next phase starts from, exactly as on the own engine.

After the last phase the ``eval`` stage runs longrl's evaluation on the last merged model.
Every external command goes through one ``run_command`` callable (``subprocess`` by default): the
boundary a test replaces by a stand-in, since verl's trainer needs GPUs.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longrl.algo.shaping import overlong_penalty
from longrl.config import Config
from longrl.data.readers import verl_row
from longrl.engines.verl.mapping import PhaseJob, check_expressible, gen_batch_size, phase_overrides
from longrl.pipeline import (
    CURRICULUM_END,
    STAGE_EVAL,
    STAGE_INIT,
    STAGE_SFT,
    Pipeline,
    phase_names,
    stage_dir,
    write_manifest,
)

log = logging.getLogger(__name__)

Command = list[str]
RunCommand = Callable[[Command], None]
CHECKPOINT_TRACKER = "latest_checkpointed_iteration.txt"
"""Written by verl after each complete checkpoint: the global step it holds."""


def subprocess_runner(cmd: Command) -> None:
    """Run a command, streaming its output; a non-zero exit raises RuntimeError naming it."""
    rc = subprocess.call(cmd)
    if rc != 0:
        raise RuntimeError(f"command failed with exit code {rc}: {shlex.join(cmd)}")


def latest_step(checkpoint_dir: str | Path) -> int:
    """The global step of verl's last complete checkpoint (0 = none)."""
    f = Path(checkpoint_dir) / CHECKPOINT_TRACKER
    return int(f.read_text().strip()) if f.is_file() else 0


def merge_command(python: str, checkpoint_dir: str | Path, step: int, target: str | Path) -> Command:
    """verl's model merger: FSDP shards of ``global_step_<step>/actor`` -> an HF model at ``target``."""
    return [python, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
            "--local_dir", str(Path(checkpoint_dir) / f"global_step_{step}" / "actor"), "--target_dir", str(target)]


def train_command(python: str, overrides: list[str]) -> Command:
    return [python, "-m", "verl.trainer.main_ppo", *overrides]


# ---------------------------------------------------------------------------- rollout dumps
def read_dumps(rollout_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of verl's rollout dumps (``<step>.jsonl``), in step order."""
    files = sorted(Path(rollout_dir).glob("*.jsonl"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    rows = []
    for f in files:
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"error: {f}:{i}: unreadable rollout dump row ({e.msg})") from None
    return rows


def dump_accuracy(row: dict[str, Any], response_tokens: int, cfg: Config, max_output_tokens: int) -> float:
    """A dumped rollout's accuracy: its ``acc`` when verl dumped reward extra info (legacy trainer), else
    from its score: verl's V1 trainer dumps ``score`` = longrl's reward + the DAPO overlong penalty, so the
    penalty (recomputed from the response length) is added back and a score of 1 counts as correct."""
    if "acc" in row:
        return float(row["acc"])
    score = float(row["score"])
    ov = cfg.reward.overlong
    if ov.enabled:
        score -= float(overlong_penalty([response_tokens], max_output_tokens, ov.buffer_tokens, ov.penalty_factor)[0])
    return 1.0 if score >= 1.0 - 1e-6 else 0.0


def record_dumps(sampler, samples, rows: list[dict[str, Any]], tokenizer, cfg: Config,
                 max_output_tokens: int) -> dict[str, int]:
    """Record each dumped rollout's accuracy in the sampler's retrospective pool, grouped per sample.

    A dump row names its prompt only through the decoded input text and the ground truth, so a row is
    matched to the sample whose first gold answer is the row's ``gts`` and whose question is in the
    input (then the document, when questions repeat). Rows that match no sample or several are counted
    and reported, never guessed."""
    by_gold: dict[str, list] = {}
    for s in samples:
        by_gold.setdefault(str(s.answer), []).append(s)
    grouped: dict[int, tuple[Any, list[float]]] = {}
    counts = {"rows": len(rows), "matched": 0, "unmatched": 0, "ambiguous": 0}
    for row in rows:
        text = str(row.get("input", ""))
        cands = [s for s in by_gold.get(str(row.get("gts")), []) if s.question in text]
        if len(cands) > 1:
            cands = [s for s in cands if s.document in text]
        if not cands:
            counts["unmatched"] += 1
            continue
        if len({id(s) for s in cands}) > 1 and len({(s.source, s.id) for s in cands}) > 1:
            counts["ambiguous"] += 1
            continue
        s = cands[0]
        n_resp = len(tokenizer(str(row.get("output", "")), add_special_tokens=False)["input_ids"])
        grouped.setdefault(id(s), (s, []))[1].append(dump_accuracy(row, n_resp, cfg, max_output_tokens))
        counts["matched"] += 1
    for s, accs in grouped.values():
        sampler.record(s, accs)
    if counts["unmatched"] or counts["ambiguous"]:
        log.warning("rollout dumps: %d rows matched no sample, %d several; they are not recorded",
                    counts["unmatched"], counts["ambiguous"])
    return counts


def write_phase_parquet(samples, path: str | Path) -> None:
    """The phase's rows in order: ``verl_row`` plus ``extra_info.document``, so the reward function's
    degenerate-answer guard sees the document as on the own engine (a pasted document chunk earns
    nothing). The document is then stored twice per row (prompt and extra_info)."""
    import pyarrow as pa
    import pyarrow.parquet as pq


    rows = []
    for i, s in enumerate(samples):
        row = verl_row(s, i)
        row["extra_info"]["document"] = s.document
        rows.append(row)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


# ---------------------------------------------------------------------------- the pipeline
class VerlPipeline(Pipeline):
    """The own pipeline with each curriculum phase compiled into a verl job (module docstring)."""

    def __init__(self, cfg: Config, run_command: RunCommand = subprocess_runner, dry_run: bool = False,
                 out: Callable[[str], None] = print, **kw):
        check_expressible(cfg)  # before any stage runs or prints: the init / SFT stages take long
        super().__init__(cfg, **kw)
        self.run_command, self.dry_run, self.out = run_command, dry_run, out
        self.phases = phase_names(cfg)

    # ------------------------------------------------------------ jobs
    def job(self, name: str, model_path: str) -> PhaseJob:
        c = self.cfg
        k = self.phases.index(name)
        ph = c.curriculum.phases[k] if c.curriculum.phases else None
        run_dir = stage_dir(c, name) / "verl"
        max_in = ph.max_input_tokens if ph else (c.data.max_input_tokens or c.eval.max_input_tokens)
        temperature = ph.temperature if ph and ph.temperature >= 0 else c.rollout.temperature
        tok = c.model.tokenizer if model_path == c.model.path else ""
        return PhaseJob(name=name, model_path=model_path, train_file=str(run_dir / "train.parquet"),
                        run_dir=str(run_dir), steps=(ph.steps if ph and ph.steps else c.rl.steps),
                        max_input_tokens=max_in,
                        max_output_tokens=(ph.max_output_tokens if ph and ph.max_output_tokens else
                                           c.rollout.max_new_tokens),
                        temperature=temperature, longrl_config=str(run_dir / "longrl.yaml"), tokenizer_path=tok)

    def expected_input(self, name: str) -> str:
        """The model a stage starts from: the previous stage's output, when known, else where it will be."""
        prev = self.names[self.names.index(name) - 1]
        m = self.manifest(prev)
        if m and m.get("status") == "complete":
            return m["output_model"]
        if prev == STAGE_INIT and self.cfg.model.path:
            return self.cfg.model.path
        return str(stage_dir(self.cfg, prev) / "final")

    def commands(self, job: PhaseJob) -> tuple[Command, Command]:
        py = self.cfg.verl.python
        return (train_command(py, phase_overrides(self.cfg, job)),
                merge_command(py, job.checkpoint_dir, job.steps, stage_dir(self.cfg, job.name) / "final"))

    # ------------------------------------------------------------ dry run
    def plan(self) -> list[dict[str, Any]]:
        """Print every command and generated file of every phase; run nothing. Returns the jobs."""
        out = []
        root = Path(self.cfg.output_dir)
        for name in self.names:
            if name in (STAGE_INIT, STAGE_SFT):
                self.out(f"# stage {name}: own engine (longrl pipeline {name} stage)")
                continue
            if name == STAGE_EVAL:
                self.out(f"# stage eval: longrl evaluation of {self.expected_input(name)} -> "
                         f"{stage_dir(self.cfg, name)}")
                continue
            job = self.job(name, self.expected_input(name))
            train, merge = self.commands(job)
            self.out(f"# phase {name}: files written by longrl before the launch")
            self.out(f"#   {job.train_file}  (verl parquet: the phase's curriculum batches, retrospective "
                     f"samples included, {job.steps} steps x {gen_batch_size(self.cfg)} prompts)")
            self.out(f"#   {job.longrl_config}  (the resolved longrl config; the reward function reads it)")
            self.out(shlex.join(train))
            self.out(shlex.join(merge))
            self.out(f"#   then: difficulty from {job.rollout_dir}/*.jsonl -> "
                     f"{stage_dir(self.cfg, name) / CURRICULUM_END}")
            out.append({"job": job, "train": train, "merge": merge})
        self.out(f"# run directory: {root}")
        return out

    # ------------------------------------------------------------ phases
    def run_training(self, name: str, m: dict[str, Any] | None) -> dict[str, Any]:
        if name == STAGE_SFT:
            return super().run_training(name, m)
        input_model = self.previous_model(name)
        tokenizer = self.load_tokenizer(input_model)
        self.ensure_data(tokenizer)
        job = self.job(name, input_model)
        d = stage_dir(self.cfg, name)
        m = self.new_manifest(name, input_model)
        m["engine"] = "verl"
        self._emit(name, "start", m)
        sampler, transition = self.write_phase_data(name, job)
        train, merge = self.commands(job)
        if latest_step(job.checkpoint_dir) < job.steps:
            self.out(shlex.join(train))
            self.run_command(train)
        step = latest_step(job.checkpoint_dir)
        if step < job.steps:
            raise RuntimeError(f"verl ended phase {name} at step {step} < {job.steps}; re-run to resume")
        self.out(shlex.join(merge))
        self.run_command(merge)
        counts = record_dumps(sampler, self.data.rl, read_dumps(job.rollout_dir), tokenizer, self.cfg,
                              job.max_output_tokens)
        (d / CURRICULUM_END).write_text(json.dumps(sampler.state_dict()))
        m["metrics"] = {"rl/steps": step} | {f"verl/dump_{k}": v for k, v in counts.items()}
        m["curriculum"] = {"transition": transition, "end": sampler.summary()}
        m["output_model"] = str(d / "final")
        m["status"] = "complete"
        m["finished"] = time.time()
        write_manifest(d, m)
        self._emit(name, "done", m)
        return m

    def write_phase_data(self, name: str, job: PhaseJob):
        """Draw the phase's batches with the curriculum sampler and write the parquet and config."""
        k = self.phases.index(name)
        sampler, transition = self.curriculum_sampler(k)
        per_step = -(-gen_batch_size(self.cfg) // self.cfg.rl.prompts_per_step)
        rows = [s for _ in range(job.steps * per_step) for s in sampler.next_batch()]
        Path(job.run_dir).mkdir(parents=True, exist_ok=True)
        write_phase_parquet(rows, job.train_file)
        Path(job.longrl_config).write_text(self.cfg.to_yaml())
        return sampler, transition


def run_verl_pipeline(cfg: Config, from_stage: str | None, until_stage: str | None, dry_run: bool,
                      on_event=None, run_command: RunCommand = subprocess_runner) -> int:
    """The CLI's entry for ``--engine verl``."""
    pipe = VerlPipeline(cfg, run_command=run_command, dry_run=dry_run, on_event=on_event)
    if dry_run:
        pipe.plan()
        return 0
    pipe.run(from_stage, until_stage)
    return 0


__all__ = ["VerlPipeline", "latest_step", "merge_command", "read_dumps", "record_dumps", "run_verl_pipeline"]
