"""`longrl eval`: evaluate on the DocQA benchmarks, or re-score saved responses.

    longrl eval --benchmarks hotpotqa docmath --data-dir DATA --endpoint URL --model NAME [--out DIR]
    longrl eval --benchmarks hotpotqa --data-dir DATA --model-path DIR          (in-process HF)
    longrl eval score PREDICTIONS.jsonl --out SCORED.jsonl
    longrl eval ... --agent memory      (read in chunks with a bounded memory; agent.* settings, docs/agent.md)

Its longrl imports sit inside the functions that use them (deliberately): `longrl eval score` (re-scoring
saved responses) and `longrl eval --help` then never load torch and transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config: its eval, model and reward.judge sections are used")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. eval.k=4 (repeatable)")
    p.add_argument("--benchmarks", nargs="+", help="benchmark names or 'all' (comma- or space-separated)")
    p.add_argument("--data-dir", help="directory holding the benchmark files")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model name sent to the endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--model-path", help="local model directory (or .gguf) generated in-process")
    p.add_argument("--tokenizer", help="tokenizer for truncation and length counts (default: the model's, "
                                       "else the Qwen tokenizer)")
    p.add_argument("--out", help="output directory (default: <output_dir>/eval); re-running resumes")
    p.add_argument("--k", type=int, help="samples per question")
    p.add_argument("--limit", type=int, help="first N questions per benchmark")
    p.add_argument("--max-input-tokens", type=int, help="middle-truncate prompts to this many tokens")
    p.add_argument("--max-new-tokens", type=int, help="generation budget")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--concurrency", type=int, help="requests in flight")
    p.add_argument("--timeout", type=float, dest="timeout_s", help="per-request timeout in seconds")
    p.add_argument("--reference", help="YAML of reported scores printed beside ours")
    p.add_argument("--judge-endpoint", help="judge base URL (sets reward.judge.backend=openai)")
    p.add_argument("--judge-model", help="judge model name")
    p.add_argument("--no-judge", action="store_true", help="rule metrics only")
    p.add_argument("--agent", choices=["none", "memory"], default="none",
                   help="'memory': read each document in agent.chunk_tokens chunks keeping a memory of at most "
                        "agent.memory_tokens, then answer from it (every turn saved); --max-input-tokens is the "
                        "window no turn may exceed. The endpoint is called on /completions "
                        "(rollout.prompt_format, rollout.split_n, rollout.extra_body apply)")
    sub = p.add_subparsers(dest="eval_action", metavar="{score}")
    s = sub.add_parser("score", help="re-score saved responses without generating",
                       description="Input lines {benchmark, id, response, answers}; output adds pred and metrics.")
    s.add_argument("predictions", help="JSONL of {benchmark, id, response, answers}")
    s.add_argument("--out", dest="scored_out", required=True, help="scored JSONL")
    s.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="malformed lines: stop naming FILE:line, or skip them (counted, listed in OUT.skips.jsonl)")


def _load_config(args):
    from longrl.config import load_config

    over = list(args.overrides)
    if args.judge_endpoint:
        over += ["reward.judge.backend=openai", f"reward.judge.endpoint={args.judge_endpoint}"]
    if args.judge_model:
        over.append(f"reward.judge.model={args.judge_model}")
    cfg = load_config(args.config, over)
    benches = [b for item in (args.benchmarks or []) for b in item.split(",") if b]
    if benches == ["all"]:
        from longrl.eval.benchmarks import BENCHMARKS

        benches = list(BENCHMARKS)
    from longrl.eval.harness import with_overrides

    cfg.eval = with_overrides(cfg.eval, benchmarks=benches or None, data_dir=args.data_dir, k=args.k,
                              limit=args.limit, max_input_tokens=args.max_input_tokens,
                              max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              concurrency=args.concurrency, timeout_s=args.timeout_s, reference=args.reference)
    if args.no_judge:
        cfg.eval.use_judge = False
    return cfg


def _judge(cfg):
    if not cfg.eval.use_judge or cfg.reward.judge.backend == "none":
        return None
    from longrl.rewards.judge import make_judge

    return make_judge(cfg.reward.judge)


def _tokenizer(args, cfg):
    from longrl.data.tokens import load_tokenizer, qwen_tokenizer_dir

    path = args.tokenizer or cfg.model.tokenizer
    if not path and args.model and Path(args.model).is_dir():
        path = args.model
    if not path:
        path = qwen_tokenizer_dir()
        print(f"eval: no --tokenizer given; truncating with the Qwen tokenizer at {path}", file=sys.stderr)
    return load_tokenizer(path)


def _backend(args, cfg):
    """(backend, tokenizer, model label)."""
    from longrl.config import ConfigError
    from longrl.eval.harness import EndpointBackend, InProcessBackend

    if args.endpoint:
        if not args.model:
            raise ConfigError("--model", "--endpoint needs --model (the name the server knows the model by)")
        backend = EndpointBackend(args.endpoint, args.model, api_key=os.environ.get(args.api_key_env, ""),
                                  concurrency=cfg.eval.concurrency, timeout_s=cfg.eval.timeout_s,
                                  max_retries=cfg.eval.max_retries, backoff_s=cfg.eval.backoff_s,
                                  max_backoff_s=cfg.eval.max_backoff_s)
        return backend, _tokenizer(args, cfg), args.model
    path = args.model_path or cfg.model.path
    if not path:
        raise ConfigError("--model-path", "give --endpoint URL --model NAME, or --model-path DIR")
    from longrl.models import load_policy

    cfg.model.path = path
    model, tokenizer = load_policy(cfg.model)
    return InProcessBackend(model, tokenizer, seed=cfg.seed, autocast=cfg.eval.autocast), tokenizer, Path(path).name


def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 20) == 0:
        print(f"eval: {done}/{total} generations", file=sys.stderr, flush=True)


def _agent_generation(args, cfg, backend, tokenizer):
    """The memory agent over the in-process model, or over the endpoint's /completions."""
    from longrl.eval.agent_eval import AgentGeneration

    e, r = cfg.eval, cfg.rollout
    if not args.endpoint:
        return AgentGeneration(cfg.agent, backend.generator, seed=cfg.seed)
    from longrl.rollout.openai import OpenAIGenerator, OpenAIGeneratorConfig

    generator = OpenAIGenerator(OpenAIGeneratorConfig(
        base_url=args.endpoint, model=args.model, api_key=os.environ.get(args.api_key_env, "") or "EMPTY",
        prompt_format=r.prompt_format, split_n=r.split_n, extra_body=dict(r.extra_body),
        max_concurrency=e.concurrency, http=e.http_policy()), tokenizer)
    return AgentGeneration(cfg.agent, generator, seed=cfg.seed, parallel=e.concurrency)


def run_generate(args, cfg) -> int:
    from longrl.eval.harness import evaluate_benchmarks, load_samples
    from longrl.eval.report import load_reference

    samples = load_samples(cfg.eval)
    backend, tokenizer, label = _backend(args, cfg)
    out = Path(args.out or Path(cfg.output_dir) / "eval")
    e = cfg.eval
    reference = load_reference(e.reference) if e.reference else None
    generate = _agent_generation(args, cfg, backend, tokenizer) if args.agent == "memory" else None
    try:
        summary, counts = evaluate_benchmarks(samples, e, backend, tokenizer, out, label, judge=_judge(cfg),
                                              reference=reference, progress=_progress, generate=generate)
    finally:
        if generate is not None:
            generate.close()
    print((out / "table.md").read_text())
    print(f"eval: {counts['cached']} cached, {counts['generated']} generated, {counts['failed']} failed "
          f"({summary['failed']} failed samples scored 0); reports in {out}", file=sys.stderr)
    return 0


def _report_skips(skips, scored_out: Path) -> None:
    from longrl.data.prepare import write_jsonl_rows

    path = scored_out.with_name(scored_out.stem + ".skips.jsonl")
    write_jsonl_rows(skips.to_rows(), path)
    files = ", ".join(f"{f}: {n}" for f, n in skips.counts_by_file().items())
    print(f"eval score: skipped {len(skips)} malformed line(s) ({files}); listed in {path}", file=sys.stderr)
    for row in skips.to_rows()[:5]:
        print(f"  {row['reason']}", file=sys.stderr)


def run_score(args, cfg) -> int:
    from longrl.data.readers import SkipLog
    from longrl.eval.harness import read_predictions, scored_from_predictions
    from longrl.eval.report import summarize

    skips = SkipLog()
    rows = read_predictions(args.predictions, args.on_error, skips)
    if len(skips):
        _report_skips(skips, Path(args.scored_out))
    judge = _judge(cfg)
    records = scored_from_predictions(rows, cfg.eval, judge)
    Path(args.scored_out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.scored_out, "w", encoding="utf-8") as f:
        for row, rec in zip(rows, records):
            out = {**row, "pred": rec["pred"], "metrics": rec["metrics"]}
            if judge is not None:
                out.update(judge=rec["judge"], judge_status=rec["judge_status"], score=rec["score"])
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    if records:
        summary = summarize(records, judged=judge is not None)
        print(json.dumps(summary["benchmarks"], indent=2))
    return 0


def check_locations(args, cfg) -> None:
    """The model and tokenizer a generating run will load exist (or may be hub ids), before any work."""
    from longrl.locations import check_location

    if not args.endpoint:
        if args.model_path:
            check_location(args.model_path, "--model-path")
        else:
            check_location(cfg.model.path, "model.path", source=cfg.source_of("model.path"))
    if args.tokenizer:
        check_location(args.tokenizer, "--tokenizer", "tokenizer")
    else:
        check_location(cfg.model.tokenizer, "model.tokenizer", "tokenizer", cfg.source_of("model.tokenizer"))


def run(args) -> int:
    cfg = _load_config(args)
    if args.eval_action == "score":
        return run_score(args, cfg)
    check_locations(args, cfg)
    return run_generate(args, cfg)


def main(argv: list[str] | None = None) -> int:
    """``python -m longrl.eval.cli ...``: the same as ``longrl eval ...`` without the other commands."""
    from longrl.config import ConfigError
    from longrl.data.records import RecordError

    parser = argparse.ArgumentParser(prog="longrl eval", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ConfigError, RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
