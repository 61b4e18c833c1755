"""One evaluation harness: prompts -> generations (cached as they complete) -> scores -> judge -> records.

Generation runs through an OpenAI-compatible chat endpoint (vLLM, SGLang, ``transformers serve``;
:mod:`longrl.http`'s thread pool, timeouts and retries) or in process (``longrl.rollout.hf.HFGenerator``).
Both send the same text: the QwenLong user prompt whose document is middle-truncated with the model's
tokenizer so that the chat prompt fits ``max_input_tokens``.

Every finished generation is appended to ``generations.jsonl`` at once, keyed by (benchmark, id,
sample index); a re-run with the same settings generates only the keys that are missing or failed.
A generation that still fails after its retries stays in the results as failed: it scores 0 and
counts in every denominator.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from longrl import http
from longrl.config import ConfigError, EvalConfig
from longrl.data.prompt import middle_truncate, render_user_prompt
from longrl.data.readers import _answer_list, _FieldError, _iter_json_records
from longrl.data.records import DocQASample, RecordError
from longrl.eval.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from longrl.eval.metrics import judge_prediction, split_thinking
from longrl.eval.report import write_reports
from longrl.rewards.judge import JudgeRequest
from longrl.rollout.hf import HFGenerator

log = logging.getLogger(__name__)

Key = tuple[str, str, int]
"""(benchmark, sample id, sample index)."""

CACHE_FILE = "generations.jsonl"
META_FILE = "generations.meta.json"


@dataclass
class Job:
    key: Key
    messages: list[dict[str, str]]
    prompt_tokens: int
    truncated: bool


@dataclass
class Generation:
    response: str
    finish_reason: str
    completion_tokens: int = -1
    error: str = ""
    """Non-empty when the generation failed after all retries."""
    turns: list[dict[str, Any]] | None = None
    """Memory agent (``--agent memory``): every turn's prompt and output, saved with the prediction."""


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def _chat_len(tokenizer, messages: list[dict[str, str]]) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return len(ids)


def build_messages(tokenizer, sample: DocQASample, max_input_tokens: int) -> tuple[list[dict[str, str]], int, bool]:
    """(chat messages, prompt tokens, truncated): the document is middle-truncated to fit the budget."""
    def messages(document: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": render_user_prompt(document, sample.question)}]

    full = messages(sample.document)
    n_full = _chat_len(tokenizer, full)
    if n_full <= max_input_tokens:
        return full, n_full, False
    frame = _chat_len(tokenizer, messages(""))
    if frame > max_input_tokens:
        raise ValueError(f"sample {sample.id!r}: instructions and question alone take {frame} tokens "
                         f"> max_input_tokens={max_input_tokens}")
    doc_ids = tokenizer.encode(sample.document.strip(), add_special_tokens=False)
    kept = middle_truncate(doc_ids, max_input_tokens - frame)
    short = messages(tokenizer.decode(kept, skip_special_tokens=True))
    return short, _chat_len(tokenizer, short), True


# --------------------------------------------------------------------------------------------------
# The on-disk cache
# --------------------------------------------------------------------------------------------------


class GenerationCache:
    """Append-only JSONL of generations; the last record of a key wins. A torn last line (a killed
    run) is ignored and counted in ``torn_lines``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[Key, dict[str, Any]] = {}
        self.torn_lines = 0
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    key = (rec["benchmark"], str(rec["id"]), int(rec["sample"]))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    self.torn_lines += 1
                    continue
                self.records[key] = rec

    def done(self, key: Key) -> bool:
        rec = self.records.get(key)
        return rec is not None and not rec.get("error")

    def add(self, job: Job, gen: Generation) -> None:
        bench, sid, idx = job.key
        rec = {"benchmark": bench, "id": sid, "sample": idx, "response": gen.response,
               "finish_reason": gen.finish_reason, "completion_tokens": gen.completion_tokens,
               "prompt_tokens": job.prompt_tokens, "truncated": job.truncated, "error": gen.error}
        if gen.turns is not None:
            rec["turns"] = gen.turns
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self._lock:
            if self.path.exists() and self.path.stat().st_size and not self._ends_with_newline():
                line = "\n" + line
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
            self.records[job.key] = rec

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, 2)
            return f.read(1) == b"\n"


def check_cache_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse to mix generations made with different settings in one output directory."""
    path = out_dir / META_FILE
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            raise ConfigError("eval", f"{out_dir} holds generations made with other settings {diff}; "
                                      "use another --out directory (or delete it) to start afresh")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(meta, indent=2))


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------


def _message_text(message: dict[str, Any]) -> str:
    """The assistant text, with server-split reasoning put back inside <think>...</think>."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    if reasoning and "</think>" not in content:
        return f"<think>{reasoning}</think>{content}"
    return content


class EndpointBackend:
    """Chat completions against an OpenAI-compatible server, ``concurrency`` requests in flight; timeout,
    retries and back-off as :mod:`longrl.http` says (the fields of ``eval``). A request that still fails
    becomes a failed :class:`Generation` carrying the error; it does not stop the others."""

    def __init__(self, base_url: str, model: str, *, api_key: str = "", concurrency: int = 8,
                 timeout_s: float = http.EVAL_TIMEOUT_S, max_retries: int = http.DEFAULT_MAX_RETRIES,
                 backoff_s: float = http.DEFAULT_BACKOFF_S, max_backoff_s: float = http.DEFAULT_MAX_BACKOFF_S):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.concurrency = concurrency
        self.policy = http.HttpPolicy(timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s,
                                      max_backoff_s=max_backoff_s)
        self.client = http.new_client(concurrency=concurrency, headers=http.bearer(api_key))

    @staticmethod
    def _generation(answer: Any) -> Generation:
        """The first choice of a chat answer; ValueError for a malformed one."""
        choices = answer.get("choices") if isinstance(answer, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise ValueError(f"answer has no choice with a message: {str(answer)[:200]}")
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        return Generation(_message_text(choice["message"]), choice.get("finish_reason") or "",
                          int(usage.get("completion_tokens", -1)))

    def run(self, jobs: list[Job], on_done: Callable[[Job, Generation], None], *, max_new_tokens: int,
            temperature: float, top_p: float) -> None:
        def one(job: Job) -> Generation:
            body = {"model": self.model, "messages": job.messages, "max_tokens": max_new_tokens,
                    "temperature": temperature, "top_p": top_p}
            try:
                return http.request_json(self.client, self.url, self.policy, body, parse=self._generation)
            except http.HttpError as e:
                return Generation("", "error", error=str(e))

        http.map_concurrent(one, jobs, self.concurrency, on_done=lambda i, gen: on_done(jobs[i], gen))


class InProcessBackend:
    """Generation with a loaded HF model through ``HFGenerator`` (one prompt at a time, its pending
    samples drawn together from one shared prefill)."""

    def __init__(self, model, tokenizer, seed: int = 0, autocast: str = "none"):
        self.tokenizer = tokenizer
        self.generator = HFGenerator(model, tokenizer, shared_prefill=True, seed=seed, autocast=autocast)

    def _decode(self, token_ids: list[int]) -> str:
        ids = list(token_ids)
        if ids and ids[-1] in self.generator.stop_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def run(self, jobs: list[Job], on_done: Callable[[Job, Generation], None], *, max_new_tokens: int,
            temperature: float, top_p: float) -> None:
        groups: dict[tuple[str, str], list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.key[:2], []).append(job)
        for group in groups.values():
            ids = self.tokenizer.apply_chat_template(group[0].messages, tokenize=True, add_generation_prompt=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            try:
                outs = self.generator.generate([list(ids)], len(group), max_new_tokens, temperature, top_p)[0]
            except (RuntimeError, ValueError) as e:
                for job in group:
                    on_done(job, Generation("", "error", error=f"{type(e).__name__}: {e}"))
                continue
            for job, comp in zip(group, outs):
                on_done(job, Generation(self._decode(comp.token_ids), comp.finish_reason, len(comp.token_ids)))


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------


def load_samples(cfg: EvalConfig) -> dict[str, list[DocQASample]]:
    """{benchmark: samples} for the configured benchmarks (validated names, ``limit`` applied)."""
    if not cfg.benchmarks:
        raise ConfigError("eval.benchmarks", "name at least one benchmark")
    for name in cfg.benchmarks:
        try:
            get_benchmark(name)
        except KeyError as e:
            raise ConfigError("eval.benchmarks", str(e.args[0])) from None
    return {name: get_benchmark(name).load(cfg.data_dir, cfg.limit) for name in cfg.benchmarks}


def plan_jobs(samples: dict[str, list[DocQASample]], k: int, cache: GenerationCache, tokenizer,
              max_input_tokens: int) -> tuple[list[Job], list[tuple[Job, str]]]:
    """Jobs for every (benchmark, id, index < k) the cache holds no successful generation of, and the
    jobs whose prompt cannot fit the budget even with an empty document (with the reason)."""
    jobs, unfit = [], []
    for bench, items in samples.items():
        for s in items:
            missing = [i for i in range(k) if not cache.done((bench, s.id, i))]
            if not missing:
                continue
            try:
                messages, n_tokens, truncated = build_messages(tokenizer, s, max_input_tokens)
            except ValueError as e:
                unfit += [(Job((bench, s.id, i), [], -1, True), str(e)) for i in missing]
                continue
            jobs += [Job((bench, s.id, i), messages, n_tokens, truncated) for i in missing]
    return jobs, unfit


def generate_all(samples: dict[str, list[DocQASample]], cfg: EvalConfig, backend, tokenizer,
                 out_dir: Path, meta: dict[str, Any], progress: Callable[[int, int], None] | None = None
                 ) -> tuple[GenerationCache, dict[str, int]]:
    """Fill the cache for every (benchmark, id, sample index); returns it and generation counts."""
    check_cache_meta(out_dir, meta)
    cache = GenerationCache(out_dir / CACHE_FILE)
    jobs, unfit = plan_jobs(samples, cfg.k, cache, tokenizer, cfg.max_input_tokens)
    total = sum(len(v) for v in samples.values()) * cfg.k
    counts = {"total": total, "cached": total - len(jobs) - len(unfit), "generated": 0, "failed": len(unfit),
              "torn_lines": cache.torn_lines}
    for job, reason in unfit:
        cache.add(job, Generation("", "error", error=reason))
    log.info("eval: %d generations cached, %d to generate", counts["cached"], len(jobs))

    def on_done(job: Job, gen: Generation) -> None:
        cache.add(job, gen)
        counts["failed" if gen.error else "generated"] += 1
        if progress:
            progress(counts["generated"] + counts["failed"], len(jobs))

    backend.run(jobs, on_done, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    return cache, counts


def generation_meta(label: str, cfg: EvalConfig) -> dict[str, Any]:
    """The settings a generations cache is tied to (:func:`check_cache_meta`)."""
    return {"model": label, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
            "top_p": cfg.top_p, "max_input_tokens": cfg.max_input_tokens} | (
        {"autocast": cfg.autocast} if cfg.autocast != "none" else {})


def evaluate_benchmarks(samples: dict[str, list[DocQASample]], cfg: EvalConfig, backend, tokenizer, out_dir: Path,
                        label: str, *, judge=None, reference: dict[str, Any] | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        generate=None) -> tuple[dict[str, Any], dict[str, int]]:
    """THE benchmark evaluation (``longrl eval`` and the pipeline's eval stage): generate what the cache in
    ``out_dir`` lacks, score (rule, then the judge when given), write samples.jsonl, summary.json and
    table.md; returns (summary, generation counts). ``generate`` replaces :func:`generate_all` (same
    arguments and result; its ``meta`` joins the cache's settings): the memory agent of
    ``longrl eval --agent memory`` (:class:`longrl.eval.agent_eval.AgentGeneration`)."""
    meta = generation_meta(label, cfg) | {"agent": getattr(generate, "meta", None)}
    cache, counts = (generate or generate_all)(samples, cfg, backend, tokenizer, out_dir, meta, progress=progress)
    records = score_generations(samples, cache, cfg, tokenizer, judge)
    extra: dict[str, Any] = {"generation": counts, "config": {**meta, "k": cfg.k, "limit": cfg.limit,
                                                              "first_gold_only": cfg.first_gold_only}}
    if judge is not None:
        extra["judge_metrics"] = judge.metrics()
    summary = write_reports(records, out_dir, label, judged=judge is not None, reference=reference, extra=extra)
    return summary, counts


def _count_tokens(tokenizer, text: str) -> int | None:
    if tokenizer is None:
        return None
    return len(tokenizer.encode(text, add_special_tokens=False)) if text else 0


def score_record(rec: dict[str, Any], answers: list[str], cfg: EvalConfig, tokenizer=None, *,
                 bench: Benchmark | None = None, sample: DocQASample | None = None) -> dict[str, Any]:
    """Add extraction, thinking length and rule metrics to a generation record (judge fields unset).
    ``bench``: the adapter (default: the registered benchmark the record names)."""
    bench = bench or get_benchmark(rec["benchmark"])
    response = rec.get("response") or ""
    failed = bool(rec.get("error")) or "response" not in rec
    scored = bench.score(response, answers, first_gold_only=cfg.first_gold_only, sample=sample)
    thinking, final = split_thinking(response)
    out = dict(rec)
    out.update(answers=answers, failed=failed, pred=scored.pred, metrics=scored.metrics, rule=scored.rule,
               has_think=final is not None, thinking_chars=len(thinking),
               thinking_tokens=_count_tokens(tokenizer, thinking), judge=None, judge_status="off",
               score=scored.rule)
    if scored.reason:
        out["reason"] = scored.reason
    return out


def apply_judge(records: list[dict[str, Any]], questions: dict[tuple[str, str], str], judge) -> None:
    """Ask the judge about every record with something to judge; score = max(rule, judge verdict).

    Statuses: 'yes' / 'no' (a verdict), 'no_verdict' (the judge failed: the rule score stands, and the
    record is counted), 'no_answer' (nothing to judge), 'failed' (the generation failed)."""
    todo, reqs = [], []
    for rec in records:
        pred = rec["pred"]
        if not pred and get_benchmark(rec["benchmark"]).judge_final_text:
            pred = judge_prediction(rec.get("response") or "", pred)
        if rec["failed"]:
            rec["judge_status"] = "failed"
        elif not pred or not rec["answers"]:
            rec["judge_status"] = "no_answer"
        else:
            todo.append(rec)
            reqs.append(JudgeRequest(question=questions[(rec["benchmark"], rec["id"])], prediction=pred,
                                     gold=rec["answers"][0]))
    verdicts = judge.judge_many(reqs) if reqs else []
    for rec, verdict in zip(todo, verdicts):
        rec["judge"] = verdict
        rec["judge_status"] = {True: "yes", False: "no", None: "no_verdict"}[verdict]
        rec["score"] = max(rec["rule"], 1.0 if verdict else 0.0)


def score_generations(samples: dict[str, list[DocQASample]], cache: GenerationCache, cfg: EvalConfig,
                      tokenizer=None, judge=None, adapters: dict[str, Benchmark] | None = None) -> list[dict[str, Any]]:
    """One scored record per (benchmark, id, sample index) in ``samples`` x k; missing ones are failed.
    ``adapters`` maps a key of ``samples`` to its adapter when it is not a registered benchmark (the
    pipeline's held-out sets: :mod:`longrl.eval.heldout`)."""
    records = []
    for bench, items in samples.items():
        adapter = (adapters or {}).get(bench) or get_benchmark(bench)
        for s in items:
            for i in range(cfg.k):
                rec = cache.records.get((bench, s.id, i)) or {
                    "benchmark": bench, "id": s.id, "sample": i, "response": "", "finish_reason": "error",
                    "error": "no generation recorded"}
                rec = score_record(rec, s.answers, cfg, tokenizer, bench=adapter, sample=s)
                rec["question"] = s.question
                records.append(rec)
    if judge is not None:
        apply_judge(records, {(b, s.id): s.question for b, v in samples.items() for s in v}, judge)
    return records


PREDICTION_FIELDS = ("benchmark", "id", "response", "answers")
"""Fields every line of a predictions file for ``longrl eval score`` must have."""


def _check_prediction(rec: Any) -> None:
    """Raise _FieldError for a predictions line that :func:`scored_from_predictions` cannot score."""
    if not isinstance(rec, dict):
        raise _FieldError("<record>", "expected a JSON object")
    for f in PREDICTION_FIELDS:
        if f not in rec:
            raise _FieldError(f, "missing")
    if not isinstance(rec["benchmark"], str) or rec["benchmark"] not in BENCHMARKS:
        raise _FieldError("benchmark", f"unknown benchmark {rec['benchmark']!r}; known: {', '.join(BENCHMARKS)}")
    if not isinstance(rec["id"], str | int):
        raise _FieldError("id", f"expected a string or integer, got {type(rec['id']).__name__}")
    if rec["response"] is not None and not isinstance(rec["response"], str):
        raise _FieldError("response", f"expected a string or null, got {type(rec['response']).__name__}")
    _answer_list(rec["answers"], "answers")


def read_predictions(path: str | Path, on_error: str = "raise", skips=None) -> list[dict[str, Any]]:
    """Lines {benchmark, id, response, answers} of a predictions JSONL file, checked.

    A malformed line is a :class:`~longrl.data.records.RecordError` naming the file line (blank lines
    count) and the field, raised (``on_error="raise"``) or recorded in ``skips``, a
    :class:`~longrl.data.readers.SkipLog` (``"skip"``).
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(str(path), "-", "<file>", "not found")
    rows = []
    for kind, pos, rec in _iter_json_records(path):
        try:
            if isinstance(rec, RecordError):
                raise rec
            try:
                _check_prediction(rec)
            except _FieldError as e:
                raise RecordError(str(path), f"{kind} {pos}", e.field_name, e.message) from None
        except RecordError as err:
            if on_error == "raise":
                raise
            skips.add(err)
            continue
        rows.append(rec)
    return rows


def scored_from_predictions(rows: Iterable[dict[str, Any]], cfg: EvalConfig, judge=None) -> list[dict[str, Any]]:
    """Re-score saved responses ({benchmark, id, response, answers}) without generating."""
    records = []
    for n, row in enumerate(rows, 1):
        missing = [f for f in ("benchmark", "id", "response", "answers") if f not in row]
        if missing:
            raise ValueError(f"line {n}: missing field(s) {missing}")
        answers = row["answers"] if isinstance(row["answers"], list) else [row["answers"]]
        base = {**row, "id": str(row["id"]), "sample": row.get("sample", 0), "error": row.get("error", "")}
        records.append(score_record(base, [str(a) for a in answers], cfg))
    if judge is not None:
        apply_judge(records, {(r["benchmark"], r["id"]): str(r.get("question", "")) for r in records}, judge)
    return records


def with_overrides(cfg: EvalConfig, **changes: Any) -> EvalConfig:
    """A copy of ``cfg`` with the non-None ``changes`` applied, validated."""
    new = replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    new.check()
    return new
