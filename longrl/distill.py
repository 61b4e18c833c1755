"""``longrl distill``: warm-up SFT data from any teacher, by rejection sampling.

QwenLong-L1 warmed up on 5.3K (document, question, reasoning + answer) triplets distilled from
DeepSeek-R1. This command makes such data for any question set with gold answers and any teacher:

1. read the sources (every format ``longrl prepare`` reads);
2. per question, sample ``k`` traces with the QwenLong prompt from the teacher: an OpenAI-compatible
   chat endpoint (vLLM, SGLang, ``transformers serve``, a hosted API; through
   :class:`~longrl.rollout.openai.OpenAIGenerator`: per-request timeout, bounded retries with back-off)
   or a model in-process (:class:`~longrl.rollout.hf.HFGenerator`);
3. score every trace with the hybrid reward (:class:`~longrl.rewards.hybrid.HybridReward`: rule score,
   optionally the LLM judge) and keep the correct ones;
4. filter (``distill.filters``): response length band, minimum document citations, de-duplication, at
   most m traces per question; write ``sft.jsonl`` (plain jsonl that ``longrl sft`` reads; the trace is
   ``metadata.response``), ``stats.json`` and ``summary.md`` (per-source yield).

Output directory::

    ledger.jsonl    one line per finished question: every trace with its reward (append-only, fsynced)
    failures.jsonl  one line per question whose requests failed after all retries (asked again on resume)
    sft.jsonl       the kept traces, in source order (re-derived from the ledger at the end of every run)
    stats.json, summary.md, metrics.jsonl

The ledger is the done-index: a killed run re-run with the same command asks the teacher only about
questions not in it (a torn last line is cut off). Requests run ``concurrency`` questions at a time
under a shared rate limit (``requests_per_s``). A question whose requests fail is recorded in
``failures.jsonl`` and counted; ``max_consecutive_failures`` in a row stop the run with an error naming
the endpoint and the last failure, after ``sft.jsonl`` and the summary are written from what finished.
Filters work on the ledger, so changing them and re-running re-requests nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longrl.analysis.behaviours import count_citations, document_ngrams
from longrl.config import Config, ConfigError, DistillConfig, DistillFilterConfig, ModelConfig, load_config
from longrl.data.prepare import parse_source_arg
from longrl.data.prompt import chat_messages, chat_prompt_ids
from longrl.data.readers import read_source
from longrl.data.records import DocQASample, RecordError
from longrl.data.tokens import load_tokenizer, qwen_tokenizer_dir
from longrl.models import load_policy
from longrl.rewards.hybrid import HybridReward, JudgeFailureError, RewardItem
from longrl.rewards.judge import make_judge
from longrl.rollout.hf import HFGenerator
from longrl.rollout.openai import GenerationError, OpenAIGenerator, OpenAIGeneratorConfig
from longrl.train.telemetry import Telemetry

log = logging.getLogger(__name__)

LEDGER = "ledger.jsonl"
FAILURES = "failures.jsonl"
SFT_FILE = "sft.jsonl"
FILTER_REASONS = ("length", "citations", "duplicate", "max_per_question")
"""Why a correct trace was not kept, in the order the filters run."""


class DistillError(RuntimeError):
    """The run cannot continue (dead teacher, judge failing); what finished is kept."""


def question_key(sample: DocQASample) -> str:
    """The ledger key of a question: ``source/id``."""
    return f"{sample.source}/{sample.id}"


# --------------------------------------------------------------------------------------------------
# Ledger (the done-index) and rate limit
# --------------------------------------------------------------------------------------------------


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync, so a finished question survives a kill."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """Finished questions by key. A torn last line (a kill mid-write) is cut off the file and logged;
    a bad line elsewhere is a RecordError naming it."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    out: dict[str, dict[str, Any]] = {}
    good_end = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            good_end += len(line) + 1
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
                raise ValueError("expected an object with a string 'key'")
        except ValueError as e:
            if n == len(lines):  # no newline after it: torn by a kill
                log.warning("%s: dropping a torn last line (%d bytes); that question is asked again", path, len(line))
                with path.open("r+b") as f:
                    f.truncate(good_end)
                break
            raise RecordError(str(path), n, "<line>", f"not a ledger record: {e}") from None
        out[rec["key"]] = rec
        good_end += len(line) + 1
    return out


class RateLimiter:
    """At most ``rate`` requests per second across threads (0 = unlimited), spaced evenly."""

    def __init__(self, rate: float, clock=time.monotonic, sleep=time.sleep):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self, n: int = 1) -> float:
        """Block until ``n`` requests may start; returns the seconds waited."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + n * self.interval
        wait_s = start - now
        if wait_s > 0:
            self.sleep(wait_s)
        return wait_s


# --------------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------------


class OpenAITeacher:
    """k traces per question from an OpenAI-compatible chat endpoint (the server applies its chat template)."""

    def __init__(self, cfg: DistillConfig, tokenizer):
        self.cfg = cfg
        self.where = cfg.endpoint
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self.generator = OpenAIGenerator(OpenAIGeneratorConfig(
            base_url=cfg.endpoint, model=cfg.teacher_model, api_key=key or "EMPTY", mode="chat",
            split_n=cfg.split_n, max_concurrency=cfg.k if cfg.split_n else 1, http=cfg.http_policy(),
            extra_body=dict(cfg.extra_body)), tokenizer)
        self.requests_per_question = cfg.k if cfg.split_n else 1

    def sample(self, sample: DocQASample) -> list[tuple[str, str]]:
        """(text, finish_reason) of ``k`` traces."""
        c = self.cfg
        group = self.generator.generate_chat([chat_messages(sample)], c.k, c.max_new_tokens, c.temperature, c.top_p)[0]
        return [(comp.text, comp.finish_reason) for comp in group]

    def close(self) -> None:
        self.generator.close()


class HFTeacher:
    """k traces per question from a model in-process (prompt prefilled once per question)."""

    requests_per_question = 1

    def __init__(self, cfg: DistillConfig, model, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.where = cfg.teacher_model
        self.generator = HFGenerator(model, tokenizer)
        self._drop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}

    def sample(self, sample: DocQASample) -> list[tuple[str, str]]:
        c = self.cfg
        group = self.generator.generate([chat_prompt_ids(self.tokenizer, sample)], c.k, c.max_new_tokens,
                                        c.temperature, c.top_p)[0]
        return [(self.tokenizer.decode([t for t in comp.token_ids if t not in self._drop]), comp.finish_reason)
                for comp in group]

    def close(self) -> None:
        pass


def make_teacher(cfg: DistillConfig):
    """(teacher, tokenizer that measures response lengths) for the config."""
    if not cfg.teacher_model:
        raise ConfigError("distill.teacher_model", "is required: the endpoint's model name, or a model path "
                          "for backend 'hf'")
    if cfg.backend == "hf":
        model, tokenizer = load_policy(ModelConfig(path=cfg.teacher_model, tokenizer=cfg.tokenizer), trainable=False)
        return HFTeacher(cfg, model, tokenizer), tokenizer
    if not cfg.endpoint:
        raise ConfigError("distill.endpoint", "is required for backend 'openai' (a base URL ending in /v1)")
    tokenizer = load_tokenizer(cfg.tokenizer or qwen_tokenizer_dir())
    return OpenAITeacher(cfg, tokenizer), tokenizer


# --------------------------------------------------------------------------------------------------
# Scoring and selection (pure over the ledger)
# --------------------------------------------------------------------------------------------------


def score_traces(hybrid, tokenizer, sample: DocQASample, traces: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Ledger entries of one question's traces: text, length, finish reason and the hybrid reward."""
    items = [RewardItem(sample.task, sample.question, text, list(sample.answers), sample.document)
             for text, _ in traces]
    results = hybrid.score_batch(items)
    return [{"text": text, "n_tokens": len(tokenizer.encode(text, add_special_tokens=False)), "finish_reason": fin,
             "score": r.score, "acc": bool(r.acc), "pred": r.pred, "decided_by": r.decided_by,
             "judge_verdict": r.judge_verdict}
            for (text, fin), r in zip(traces, results)]


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def select_traces(sample: DocQASample, traces: list[dict[str, Any]],
                  f: DistillFilterConfig) -> tuple[list[tuple[int, dict[str, Any], int]], Counter]:
    """The correct traces that pass the filters, as (trace index, trace, citations), and a Counter of
    why the other correct ones were dropped (:data:`FILTER_REASONS`)."""
    kept: list[tuple[int, dict[str, Any], int]] = []
    dropped: Counter = Counter()
    seen: set[str] = set()
    grams = document_ngrams(sample.document, f.citation_ngram) if any(t["acc"] for t in traces) else set()
    for j, t in enumerate(traces):
        if not t["acc"]:
            continue
        n = t["n_tokens"]
        if n < f.min_response_tokens or (f.max_response_tokens and n > f.max_response_tokens):
            dropped["length"] += 1
            continue
        cites = count_citations(t["text"], grams, f.citation_ngram)
        if cites < f.min_citations:
            dropped["citations"] += 1
            continue
        if f.dedup and _fold(t["text"]) in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(_fold(t["text"]))
        if f.max_per_question and len(kept) >= f.max_per_question:
            dropped["max_per_question"] += 1
            continue
        kept.append((j, t, cites))
    return kept, dropped


def sft_row(sample: DocQASample, j: int, trace: dict[str, Any], cites: int, teacher: str) -> dict[str, Any]:
    """One SFT example: the question's sample with the trace as ``metadata.response``."""
    meta = {**sample.metadata, "response": trace["text"],
            "distill": {"teacher": teacher, "question": sample.id, "trace": j, "score": trace["score"],
                        "n_tokens": trace["n_tokens"], "citations": cites}}
    return {**sample.to_dict(), "id": f"{sample.id}#{j}", "metadata": meta}


@dataclass
class SourceStats:
    questions: int = 0
    """Questions in the source (after ``limit``)."""
    done: int = 0
    """Questions answered by the teacher (in the ledger)."""
    sampled: int = 0
    correct: int = 0
    kept: int = 0
    failed_requests: int = 0
    """Questions whose requests failed after all retries (every run so far)."""
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def yield_(self) -> float:
        return self.kept / self.sampled if self.sampled else 0.0


def finalize(samples: list[DocQASample], ledger: dict[str, dict[str, Any]], failures: Counter, cfg: DistillConfig,
             out: Path) -> dict[str, SourceStats]:
    """Write ``sft.jsonl`` (source order) from the ledger; return per-source stats."""
    stats: dict[str, SourceStats] = {}
    tmp = out / (SFT_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for s in samples:
            st = stats.setdefault(s.source, SourceStats())
            st.questions += 1
            key = question_key(s)
            st.failed_requests += failures.get(key, 0)
            rec = ledger.get(key)
            if rec is None:
                continue
            kept, dropped = select_traces(s, rec["traces"], cfg.filters)
            st.done += 1
            st.sampled += len(rec["traces"])
            st.correct += sum(bool(t["acc"]) for t in rec["traces"])
            st.kept += len(kept)
            for reason, n in dropped.items():
                st.dropped[reason] = st.dropped.get(reason, 0) + n
            for j, t, cites in kept:
                fh.write(json.dumps(sft_row(s, j, t, cites, rec.get("teacher", "")), ensure_ascii=False) + "\n")
    tmp.replace(out / SFT_FILE)
    return stats


def summary_markdown(stats: dict[str, SourceStats], cfg: DistillConfig, reward_metrics: dict[str, float],
                     error: str = "") -> str:
    """The per-source yield table with the run's settings."""
    total = SourceStats()
    for st in stats.values():
        for name in ("questions", "done", "sampled", "correct", "kept", "failed_requests"):
            setattr(total, name, getattr(total, name) + getattr(st, name))
        for r, n in st.dropped.items():
            total.dropped[r] = total.dropped.get(r, 0) + n
    f = cfg.filters
    lines = ["# longrl distill summary", "",
             f"Teacher: `{cfg.teacher_model}` ({cfg.backend}{' at ' + cfg.endpoint if cfg.backend == 'openai' else ''}); "
             f"k = {cfg.k}, temperature {cfg.temperature}, top_p {cfg.top_p}, max_new_tokens {cfg.max_new_tokens}.  ",
             f"Filters: response tokens [{f.min_response_tokens}, {f.max_response_tokens or 'inf'}], "
             f"min citations {f.min_citations} ({f.citation_ngram}-word spans), dedup {f.dedup}, "
             f"max per question {f.max_per_question or 'all'}.", ""]
    if error:
        lines += [f"**Stopped early:** {error}", ""]
    head = ["source", "questions done", "traces sampled", "correct", "kept", "yield (kept/sampled)",
            "failed requests", *[f"dropped: {r}" for r in FILTER_REASONS]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, st in [*sorted(stats.items()), ("**all**", total)]:
        cells = [name, f"{st.done}/{st.questions}", str(st.sampled), str(st.correct), str(st.kept),
                 f"{100 * st.yield_:.1f}%", str(st.failed_requests), *[str(st.dropped.get(r, 0)) for r in FILTER_REASONS]]
        lines.append("| " + " | ".join(cells) + " |")
    judge = {k: v for k, v in reward_metrics.items() if k.startswith("reward/judge") and v}
    if judge:
        lines += ["", "Judge (this run): " + ", ".join(f"{k} = {v:.3g}" for k, v in sorted(judge.items()))]
    lines += ["", f"SFT file: `{SFT_FILE}` ({total.kept} examples; train with `longrl sft` and "
              f"`sft.sources=[{{path: {SFT_FILE}, format: jsonl}}]`).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def load_samples(cfg: Config) -> list[DocQASample]:
    """The questions: ``distill.sources`` (or ``data.sources``), cut to ``distill.limit``."""
    sources = cfg.distill.sources or cfg.data.sources
    if not sources:
        raise ConfigError("distill.sources", "no questions: set distill.sources (or data.sources), or pass --source")
    samples: list[DocQASample] = []
    for src in sources:
        samples.extend(read_source(src.path, format=src.format, name=src.name, on_error=cfg.data.on_error))
    keys = Counter(question_key(s) for s in samples)
    dup = next((k for k, n in keys.items() if n > 1), None)
    if dup:
        raise RecordError(dup.split("/")[0], dup.split("/", 1)[1], "id", "duplicate question id in the sources; "
                          "ids key the resumable ledger and must be unique per source")
    missing = next((s for s in samples if not s.answers), None)
    if missing:
        raise RecordError(missing.source, missing.id, "answers", "no gold answer: rejection sampling needs one")
    return samples[:cfg.distill.limit] if cfg.distill.limit else samples


def output_dir(cfg: Config) -> Path:
    return Path(cfg.distill.out or Path(cfg.output_dir) / "distill")


@dataclass
class DistillResult:
    out: Path
    stats: dict[str, SourceStats]
    requested: int
    """Questions sent to the teacher in this run."""
    reward_metrics: dict[str, float]


class _Run:
    """One invocation: the pending questions through a bounded pool, results recorded as they finish."""

    def __init__(self, cfg: Config, teacher, tokenizer, hybrid, out: Path, ledger: dict, failures: Counter):
        self.cfg, self.dc = cfg, cfg.distill
        self.teacher, self.tokenizer, self.hybrid = teacher, tokenizer, hybrid
        self.out, self.ledger, self.failures = out, ledger, failures
        self.limiter = RateLimiter(self.dc.requests_per_s)
        self.consecutive_failures = 0
        self.last_error = ""
        self.requested = 0
        self.totals = Counter()

    def fetch(self, sample: DocQASample) -> list[tuple[str, str]]:
        self.limiter.acquire(self.teacher.requests_per_question)
        return self.teacher.sample(sample)

    def record(self, sample: DocQASample, fut: Future) -> None:
        """Score and append a finished question, or count its failure (raises past the failure limit)."""
        key = question_key(sample)
        try:
            traces = fut.result()
        except (GenerationError, RuntimeError, ValueError, OSError) as e:
            self.failures[key] += 1
            self.consecutive_failures += 1
            self.last_error = f"{type(e).__name__}: {e}"
            self.totals["failed"] += 1
            append_line(self.out / FAILURES, {"key": key, "error": self.last_error, "time": time.time()})
            log.warning("question %s: teacher failed after retries: %s", key, self.last_error)
            if self.consecutive_failures >= self.dc.max_consecutive_failures:
                raise DistillError(
                    f"the teacher at {self.teacher.where} failed {self.consecutive_failures} questions in a row "
                    f"(limit distill.max_consecutive_failures={self.dc.max_consecutive_failures}); last error: "
                    f"{self.last_error}. The {len(self.ledger)} finished questions are kept in "
                    f"{self.out / LEDGER}; re-run the same command to resume.") from e
            return
        self.consecutive_failures = 0
        scored = score_traces(self.hybrid, self.tokenizer, sample, traces)
        rec = {"key": key, "source": sample.source, "id": sample.id, "teacher": self.dc.teacher_model,
               "traces": scored}
        append_line(self.out / LEDGER, rec)
        self.ledger[key] = rec
        self.totals["sampled"] += len(scored)
        self.totals["correct"] += sum(t["acc"] for t in scored)

    def run(self, pending: list[DocQASample], tel) -> None:
        """All of ``pending`` with at most ``concurrency`` questions in flight; stops submitting on error."""
        workers = 1 if self.dc.backend == "hf" else self.dc.concurrency
        queue = iter(pending)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            inflight: dict[Future, DocQASample] = {}
            error: BaseException | None = None
            while True:
                while error is None and len(inflight) < workers:
                    s = next(queue, None)
                    if s is None:
                        break
                    inflight[pool.submit(self.fetch, s)] = s
                    self.requested += 1
                if not inflight:
                    break
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    sample = inflight.pop(fut)
                    try:
                        self.record(sample, fut)
                    except BaseException as e:  # noqa: BLE001 - finish the in-flight questions, then re-raise
                        error = error or e
                    tel.log(len(self.ledger), {f"distill/{k}": v for k, v in self.totals.items()})
            if error is not None:
                raise error


def run_distill(cfg: Config, progress: bool = True) -> DistillResult:
    """Distil ``cfg.distill`` into its output directory (resuming from the ledger there)."""
    dc = cfg.distill
    samples = load_samples(cfg)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    ledger = read_ledger(out / LEDGER)
    failures = failure_counts(out / FAILURES)
    pending = [s for s in samples if question_key(s) not in ledger]
    log.info("distill: %d questions, %d already in %s, %d to ask", len(samples), len(samples) - len(pending),
             out / LEDGER, len(pending))
    reward_cfg = dataclasses.replace(cfg.reward, require_think=dc.require_think)
    hybrid = HybridReward(reward_cfg, make_judge(reward_cfg.judge))
    error = ""
    run = None
    tel = Telemetry(out, total_steps=len(samples), start_step=len(samples) - len(pending), description="distill",
                    tensorboard=False, progress=progress and cfg.logging.progress)
    try:
        if pending:
            teacher, tokenizer = make_teacher(dc)
            run = _Run(cfg, teacher, tokenizer, hybrid, out, ledger, failures)
            try:
                run.run(pending, tel)
            finally:
                teacher.close()
    except (DistillError, JudgeFailureError) as e:
        error = str(e)
        raise DistillError(error) from e
    finally:
        tel.close()
        stats = finalize(samples, ledger, failures, dc, out)
        metrics = hybrid.metrics()
        (out / "stats.json").write_text(json.dumps({
            "sources": {k: {**vars(v), "yield": v.yield_} for k, v in stats.items()},
            "requested_this_run": run.requested if run else 0, "reward": metrics, "error": error}, indent=1))
        (out / "summary.md").write_text(summary_markdown(stats, dc, metrics, error))
    return DistillResult(out, stats, run.requested if run else 0, metrics)


def failure_counts(path: Path) -> Counter:
    """Failed-question counts by key from ``failures.jsonl`` (a torn line is ignored: it is only a count)."""
    counts: Counter = Counter()
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                counts[json.loads(line)["key"]] += 1
            except (ValueError, KeyError, TypeError):
                continue
    return counts


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (its distill section; reward.* for scoring)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. distill.k=8")
    parser.add_argument("--source", action="append", default=[], metavar="PATH[:FORMAT]",
                        help="questions to distil (repeatable; replaces distill.sources)")
    parser.add_argument("--endpoint", help="teacher: OpenAI-compatible base URL ending in /v1")
    parser.add_argument("--teacher-model", help="teacher model name (endpoint) or path (--backend hf)")
    parser.add_argument("--backend", choices=["openai", "hf"], help="teacher backend")
    parser.add_argument("--out", help="output directory (default: <output_dir>/distill)")
    parser.add_argument("-k", type=int, help="traces per question")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    flags = {"endpoint": args.endpoint, "teacher_model": args.teacher_model, "backend": args.backend,
             "out": args.out, "k": args.k}
    overrides += [f"distill.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    if args.source:
        srcs = [parse_source_arg(s) for s in args.source]
        overrides.append("distill.sources=" + json.dumps([{"path": s.path, "format": s.format} for s in srcs]))
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        res = run_distill(cfg)
    except DistillError as e:
        print(f"error: {e}\nsummary of what finished: {output_dir(cfg) / 'summary.md'}", file=sys.stderr)
        return 2
    total_kept = sum(s.kept for s in res.stats.values())
    total_sampled = sum(s.sampled for s in res.stats.values())
    print((res.out / "summary.md").read_text())
    print(f"distill done: {total_kept} of {total_sampled} traces kept; asked the teacher about {res.requested} "
          f"questions in this run; SFT data in {res.out / SFT_FILE}")
    return 0
