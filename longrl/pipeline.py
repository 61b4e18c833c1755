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

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
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
class PipelineData:
    """What the stages train and evaluate on."""

    sft: list[DocQASample]
    rl: list[DocQASample]
    heldout: dict[str, list[DocQASample]] = field(default_factory=dict)
    """Held-out sets by label (e.g. ``"256"``: documents of 256 tokens)."""
    phases: dict[int, list[DocQASample]] = field(default_factory=dict)
    """RL samples of the curriculum phases that name their own ``sources``, by phase index."""
    phase_names: dict[int, str] = field(default_factory=dict)

    def hashes(self) -> dict[str, str]:
        out = {"sft": samples_hash(self.sft), "rl": samples_hash(self.rl)}
        out.update({f"heldout/{k}": samples_hash(v) for k, v in self.heldout.items()})
        out.update({f"phase/{self.phase_names.get(k, k)}": samples_hash(v) for k, v in self.phases.items()})
        return out


@dataclass
class StageEvent:
    """What :func:`run_pipeline` reports to its ``on_event`` callback."""

    stage: str
    kind: str
    """'skip' (already complete), 'start', 'trained', 'evaluated', 'done'."""
    manifest: dict[str, Any]


# ---------------------------------------------------------------------------- stages and manifests
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


# ---------------------------------------------------------------------------- policy and data
PRETRAIN_METRICS = "pretrain.json"
"""File in a from-scratch init model folder: the copy / recall pretraining metrics."""


def build_policy_from_scratch(cfg: Config, path: Path, progress: bool = False) -> Path:
    """A tokenizer trained on synthetic prompts (the QwenLong template filled with synthetic documents and
    questions) and SFT targets, and a random Qwen2 model, saved at ``path``.

    With ``pipeline.tiny.copy_pretrain.steps`` > 0 the model is first trained on the copying task
    (:mod:`longrl.train.copy_pretrain`), then, with ``pipeline.tiny.recall_pretrain.steps`` > 0, on document
    recall (:mod:`longrl.train.recall_pretrain`); their logs go to ``path.parent / "copy_pretrain"`` and
    ``path.parent / "recall_pretrain"``, their final held-out metrics to ``path / PRETRAIN_METRICS``.
    """
    from longrl.data.prompt import render_user_prompt
    from longrl.data.synth import generate
    from longrl.models import build_tiny_model, build_tiny_tokenizer, save_pretrained_dir
    from longrl.train.sft import sft_target

    t = cfg.pipeline.tiny
    corpus = generate(t.corpus_samples, t.corpus_tokens, cfg.seed, cfg.pipeline.synthetic.families, split="corpus")
    texts = [_space_after_newline(x) for s in corpus
             for x in (render_user_prompt(s.document, s.question), sft_target(s))]
    tokenizer = adapt_tiny_tokenizer(build_tiny_tokenizer(texts, vocab_size=t.vocab_size))
    model = build_tiny_model(tokenizer, hidden_size=t.hidden_size, num_layers=t.num_layers, num_heads=t.num_heads,
                             num_kv_heads=t.num_kv_heads, seed=cfg.seed)
    metrics: dict[str, Any] = {}
    if t.copy_pretrain.steps:
        from longrl.train.copy_pretrain import copy_pretrain

        metrics |= copy_pretrain(model, tokenizer, t.copy_pretrain, seed=cfg.seed, run_dir=path.parent / "copy_pretrain",
                                 progress=progress)
    if t.recall_pretrain.steps:
        from longrl.train.recall_pretrain import recall_pretrain

        metrics |= recall_pretrain(model, tokenizer, t.recall_pretrain, families=cfg.pipeline.synthetic.families,
                                   seed=cfg.seed, run_dir=path.parent / "recall_pretrain", progress=progress)
    save_pretrained_dir(model, tokenizer, path)
    if metrics:
        (path / PRETRAIN_METRICS).write_text(json.dumps(metrics, indent=1))
    return path


_NEWLINE_BEFORE_TEXT = r"\n(?=[^\n])"


def _space_after_newline(text: str) -> str:
    """What the tiny tokenizer's normalizer does (see :func:`adapt_tiny_tokenizer`)."""
    import re

    return re.sub(_NEWLINE_BEFORE_TEXT, "\n ", text)


def adapt_tiny_tokenizer(tokenizer):
    """``build_tiny_tokenizer``'s output with a normalizer that puts a space after a newline before text.

    A paragraph's first word is then the same token as everywhere else: the Qwen2 pre-tokenizer never
    merges a newline into a word, so ``"\\n\\nKalor"`` would give ``Kalor``, not `` Kalor``, and a model
    learning from scratch would first have to learn that the two are one name. Load the saved directory
    with :func:`longrl.models.load_tokenizer`, which keeps the normalizer (``AutoTokenizer`` would not).
    """
    from tokenizers import Regex, normalizers

    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(_NEWLINE_BEFORE_TEXT), "\n ")])
    return tokenizer


def synthetic_data(cfg: Config, tokenizer) -> PipelineData:
    """SFT / RL / held-out synthetic sets, documents measured with the policy tokenizer."""
    from longrl.data.synth import generate
    from longrl.data.tokens import token_counter

    syn = cfg.pipeline.synthetic
    count = token_counter(tokenizer)

    def make(sets, split: str) -> list[DocQASample]:
        return [s for st in sets for s in generate(st.n, st.target_tokens, cfg.seed, syn.families, split, count)]

    heldout = {str(st.target_tokens): generate(st.n, st.target_tokens, cfg.seed, syn.families, "heldout", count)
               for st in syn.heldout}
    return PipelineData(sft=make(syn.sft, "sft"), rl=make(syn.train, "train"), heldout=heldout,
                        **phase_data(cfg))


def phase_data(cfg: Config) -> dict[str, dict]:
    """The samples of ``curriculum.phases[k].sources`` by phase index, and those phases' names."""
    from longrl.data.readers import read_sources

    phases = {k: read_sources(ph.sources, cfg.data.on_error) for k, ph in enumerate(cfg.curriculum.phases)
              if ph.sources}
    return {"phases": phases, "phase_names": {k: phase_names(cfg)[k] for k in phases}}


def file_data(cfg: Config) -> PipelineData:
    from longrl.data.readers import read_sources

    if not cfg.data.sources:
        raise ConfigError("data.sources", "no RL data: set data.sources or pipeline.synthetic.enabled")
    rl = read_sources(cfg.data.sources, cfg.data.on_error)
    sft = read_sources(cfg.sft.sources, cfg.data.on_error) if cfg.sft.sources else list(rl)
    return PipelineData(sft=sft, rl=rl, **phase_data(cfg))


def load_data(cfg: Config, tokenizer) -> PipelineData:
    """The pipeline's samples with prompt token counts (``n_tokens``) from the policy tokenizer."""
    from longrl.data.tokens import count_prompt_tokens

    data = synthetic_data(cfg, tokenizer) if cfg.pipeline.synthetic.enabled else file_data(cfg)
    for samples in (data.sft, data.rl, *data.heldout.values(), *data.phases.values()):
        if samples:
            count_prompt_tokens(samples, tokenizer, workers=1, cache_dir=cfg.data.cache_dir)
    if cfg.data.max_input_tokens:
        data.rl = _drop_long(data.rl, cfg.data.max_input_tokens, "RL samples")
        data.phases = {k: _drop_long(v, cfg.data.max_input_tokens, f"samples of phase {data.phase_names[k]}")
                       for k, v in data.phases.items()}
    return data


def _drop_long(samples: list[DocQASample], limit: int, what: str) -> list[DocQASample]:
    kept = [s for s in samples if s.n_tokens <= limit]
    if len(kept) < len(samples):
        log.info("dropped %d %s over data.max_input_tokens=%d", len(samples) - len(kept), what, limit)
    return kept


def write_data(data: PipelineData, out: Path) -> None:
    """The sets as JSONL under ``out`` (for inspection; the pipeline regenerates them deterministically)."""
    from longrl.data.readers import write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(data.sft, out / "sft.jsonl")
    write_jsonl(data.rl, out / "rl.jsonl")
    for name, samples in data.heldout.items():
        write_jsonl(samples, out / f"heldout_{name}.jsonl")


# ---------------------------------------------------------------------------- the pipeline object
def behaviour_report(cfg, out_dir: str | Path, plot_path: str | Path) -> dict[str, Any]:
    """:func:`write_stage_report` over a pipeline run directory: every stage's held-out predictions and
    every RL phase's rollout samples and metrics."""
    from longrl.analysis.behaviours import run_documents, write_stage_report

    stages = [(n, stage_dir(cfg, n) / "heldout_predictions.jsonl") for n in stage_names(cfg)]
    stages = [(n, p) for n, p in stages if p.is_file()]
    phases = [(n, stage_dir(cfg, n)) for n in phase_names(cfg)]
    return write_stage_report(stages, phases, out_dir, plot_path, run_documents(Path(cfg.output_dir) / "data"))


class Pipeline:
    """Runs the stages of one config; see the module docstring."""

    def __init__(self, cfg: Config, on_event=None, progress: bool = True):
        self.cfg = cfg
        self.names = stage_names(cfg)
        self.cfg_hash = cfg.hash()
        self.on_event = on_event
        self.progress = progress
        self.data: PipelineData | None = None
        self.data_hashes: dict[str, str] = {}
        self._accelerator = None

    # ------------------------------------------------------------ helpers
    @property
    def accelerator(self):
        if self._accelerator is None:
            from longrl.train.runtime import default_accelerator

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
        from longrl.models import load_policy

        model_cfg = dataclasses.replace(self.cfg.model, path=path,
                                        tokenizer=self.cfg.model.tokenizer if path == self.cfg.model.path else "")
        model, tokenizer = load_policy(model_cfg, trainable=trainable)
        return model.to(self.accelerator.device), tokenizer

    def load_tokenizer(self, path: str):
        from longrl.models import _pretrained_location, load_tokenizer

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

    # ------------------------------------------------------------ running
    def run(self, from_stage: str | None = None, until_stage: str | None = None) -> list[dict[str, Any]]:
        """Run the selected stages; returns the manifests of every stage that is complete afterwards."""
        from longrl.locations import check_model_config

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

    def run_init(self, m: dict[str, Any] | None) -> dict[str, Any]:
        d = stage_dir(self.cfg, STAGE_INIT)
        if self.cfg.model.path.endswith(".gguf"):
            # de-quantised once into an ordinary checkpoint that every later stage loads and saves
            path = str(d / "final")
            if not (d / "final" / "config.json").is_file() and self.accelerator.is_main_process:
                from longrl.models import export_gguf_as_hf_dir

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

    def finish(self, name: str, m: dict[str, Any], model, tokenizer) -> dict[str, Any]:
        """Evaluate the stage's model on the held-out sets (when configured) and mark it complete."""
        if self.cfg.pipeline.stage_eval and self.data and self.data.heldout and m.get("eval") is None:
            t0 = time.perf_counter()
            table, records = self.evaluate(model, tokenizer, name)
            m["eval"] = table
            m["eval_wall_s"] = time.perf_counter() - t0
            if self.accelerator.is_main_process:
                from longrl.data.prepare import write_jsonl_rows

                write_jsonl_rows(records, stage_dir(self.cfg, name) / "heldout_predictions.jsonl")
            self._emit(name, "evaluated", m)
        m["status"] = "complete"
        m["finished"] = time.time()
        if self.accelerator.is_main_process:
            write_manifest(stage_dir(self.cfg, name), m)
        self._emit(name, "done", m)
        return m

    # ------------------------------------------------------------ stage bodies
    def train_sft(self, model, tokenizer, d: Path) -> dict[str, Any]:
        from longrl.train.sft import train_sft

        c = self.cfg
        res = train_sft(model, tokenizer, self.data.sft, c.sft, run_dir=d, seed=c.seed, logging_cfg=c.logging,
                        save_every=c.save_every, keep_checkpoints=c.keep_checkpoints, accelerator=self.accelerator)
        return {"sft/steps": res.steps, "sft/train_loss": res.train_loss, "sft/heldout_loss": res.heldout_loss,
                "sft/skipped_long": res.skipped_long, "sft/examples": len(self.data.sft)}

    def curriculum_sampler(self, phase: int):
        """The curriculum sampler positioned at the start of ``phase`` (advancing from the previous one)."""
        from longrl.curriculum.samplers import CurriculumSampler

        c = self.cfg
        sampler = CurriculumSampler.from_config(self.data.rl, c.curriculum, c.rl.prompts_per_step, c.seed,
                                                default_output_tokens=c.rollout.max_new_tokens,
                                                data_sources=c.data.sources, phase_samples=self.data.phases)
        if phase == 0:
            return sampler, {}
        prev = stage_dir(c, phase_names(c)[phase - 1]) / CURRICULUM_END
        if not prev.is_file():
            raise StageError(f"{prev} is missing: phase {phase} starts from the end state of phase {phase - 1}")
        sampler.load_state_dict(json.loads(prev.read_text()))
        return sampler, sampler.advance()

    def train_phase(self, name: str, model, tokenizer, d: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        from longrl.train.rl import make_reward_fn, train_rl

        c = self.cfg
        k = phase_names(c).index(name)
        ph = c.curriculum.phases[k] if c.curriculum.phases else None
        sampler, transition = self.curriculum_sampler(k)
        if transition:
            log.info("phase %s starts with retrospective pool: %s", name, _pool_line(transition))
        res = train_rl(model, tokenizer, sampler, make_reward_fn(c.reward), c, run_dir=d,
                       steps=(ph.steps or None) if ph else None,
                       max_new_tokens=(ph.max_output_tokens or None) if ph else None,
                       temperature=ph.temperature if ph else None, on_accuracies=sampler.record,
                       accelerator=self.accelerator)
        if self.accelerator.is_main_process:
            (d / CURRICULUM_END).write_text(json.dumps(sampler.state_dict()))
        metrics = {k2: v for k2, v in res.last_metrics.items() if isinstance(v, int | float)}
        metrics["rl/steps"] = res.steps
        metrics["rl/skipped_updates"] = res.skipped_updates
        return metrics, {"transition": transition, "end": sampler.summary()}

    def evaluate(self, model, tokenizer, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from longrl.analysis.heldout import evaluate_sets

        e, p = self.cfg.eval, self.cfg.pipeline
        total = sum(len(v) for v in self.data.heldout.values()) * e.k
        with _progress_bar(f"eval {name}", total, self.progress and self.accelerator.is_main_process) as advance:
            return evaluate_sets(model, tokenizer, self.data.heldout, max_new_tokens=e.max_new_tokens,
                                 temperature=e.temperature, top_p=e.top_p, k=e.k, batch_size=p.eval_batch_size,
                                 seed=self.cfg.seed, max_input_tokens=e.max_input_tokens,
                                 require_think=self.cfg.reward.require_think,
                                 token_budget=p.eval_batch_tokens, on_batch=advance)

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
        """The DocQA benchmarks of ``eval.benchmarks`` through the eval harness (in process)."""
        from longrl.eval.harness import InProcessBackend, generate_all, load_samples, score_generations
        from longrl.eval.report import write_reports

        e = self.cfg.eval
        samples = load_samples(e)
        model, tokenizer = self.load_model(model_path, trainable=False)
        meta = {"model": model_path, "max_new_tokens": e.max_new_tokens, "temperature": e.temperature,
                "top_p": e.top_p, "max_input_tokens": e.max_input_tokens}
        cache, counts = generate_all(samples, e, InProcessBackend(model, tokenizer, seed=self.cfg.seed), tokenizer,
                                     out / "benchmarks", meta)
        records = score_generations(samples, cache, e, tokenizer)
        summary = write_reports(records, out / "benchmarks", Path(model_path).name, judged=False,
                                extra={"generation": counts})
        return summary.get("benchmarks", summary)


# ---------------------------------------------------------------------------- reporting helpers
def _pool_line(summary: dict[str, Any]) -> str:
    keys = ("retro/pool_size", "retro/mean_difficulty", "retro/dropped_easy", "retro/dropped_input_budget",
            "retro/dropped_cap")
    return ", ".join(f"{k.split('/')[-1]}={summary[k]:.3g}" for k in keys if k in summary)


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def ordered_sets(table: dict[str, Any]) -> list[str]:
    """Set labels of an accuracy table, numeric labels (document lengths) in increasing order."""
    return sorted(table["sets"], key=lambda k: (0, int(k), k) if k.isdigit() else (1, 0, k))


def markdown_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Held-out accuracy (%): one row per (document length, family), one column per stage."""
    first = rows[0][1]
    sets = ordered_sets(first)
    fams = sorted({f for _, t in rows for st in t["sets"].values() for f in st["families"]})
    head = ["documents", "family"] + [stage for stage, _ in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sets:
        label = f"{name} tokens" if name.isdigit() else name
        for fam in ["all", *fams]:
            cells = [label, f"**{fam}**" if fam == "all" else fam]
            for _, t in rows:
                st = t["sets"].get(name, {})
                cells.append(_pct(st.get("acc", float("nan")) if fam == "all"
                                  else st.get("families", {}).get(fam, float("nan"))))
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("| **all** | **all** | " + " | ".join(_pct(t["acc"]) for _, t in rows) + " |")
    per_set = ", ".join(f"{s}: {first['sets'][s]['n']}" for s in sets)
    lines.append(f"\n{first['n']} held-out generations per stage ({per_set}).")
    return "\n".join(lines)


class _progress_bar:
    """Context manager yielding ``advance(n)``; a rich progress bar when enabled, else a no-op."""

    def __init__(self, description: str, total: int, enabled: bool):
        self.description, self.total, self.enabled = description, total, enabled
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn())
        self._progress.start()
        task = self._progress.add_task(self.description, total=self.total)
        return lambda n: self._progress.update(task, advance=n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False


def print_event(ev: StageEvent) -> None:
    """Default stage logger for the CLI."""
    m = ev.manifest
    if ev.kind == "skip":
        print(f"[{ev.stage}] complete; skipped")
    elif ev.kind == "start":
        print(f"[{ev.stage}] starting from {m['input_model']}")
    elif ev.kind == "trained":
        print(f"[{ev.stage}] trained in {m['train_wall_s']:.0f}s")
        if m.get("curriculum", {}).get("transition"):
            print(f"[{ev.stage}] retrospective pool: {_pool_line(m['curriculum']['transition'])}")
    elif ev.kind == "evaluated":
        t = m["eval"]
        sets = ", ".join(f"{k} tok {100 * v['acc']:.1f}%" for k, v in t["sets"].items())
        print(f"[{ev.stage}] held-out accuracy {100 * t['acc']:.1f}% ({sets}) in {m['eval_wall_s']:.0f}s")
