"""Token-counting throughput: longrl's counter (batched / worker processes / disk cache) against a plain
one-at-a-time ``tokenizer.encode`` loop over the same chat prompts, measured in the same run.

    python bench/bench_tokens.py                      # 32 documents of ~16K tokens (about a minute)
    python bench/bench_tokens.py --docs 2000 --doc-tokens 60000 --workers 16

Documents are distinct slices of the real LongBench contexts in the shared samples (random words when
they are absent), so every prompt is a fresh cache key. Every method's counts are checked against the
baseline before any figure is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from longrl.data.prompt import chat_prompt_text
from longrl.data.records import DocQASample
from longrl.data.tokens import count_prompt_tokens, load_tokenizer

SHARED_SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "docqa_samples"
CHARS_PER_TOKEN = 4
"""Rough English characters per Qwen token, used only to size the documents."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=32, help="number of documents")
    p.add_argument("--doc-tokens", type=int, default=16000, help="approximate tokens per document")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the parallel run")
    p.add_argument("--batch-size", type=int, default=16, help="texts per encode_batch call")
    p.add_argument("--tokenizer", default="", help="tokenizer dir or hub id (default: the Qwen tokenizer)")
    p.add_argument("--corpus", default=str(SHARED_SAMPLES), help="directory of LongBench jsonl files")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def load_corpus(corpus_dir: Path, seed: int) -> str:
    """All LongBench contexts joined, or 4M characters of random words when none are found."""
    contexts = [json.loads(line)["context"] for f in sorted(corpus_dir.glob("longbench_*.jsonl"))
                for line in f.read_text().splitlines() if line.strip()]
    if contexts:
        return "\n\n".join(contexts)
    rng = random.Random(seed)
    words = ["river", "ledger", "1987", "Amber", "signed", "the", "of", "council", "42.5%", "north", "said"]
    return " ".join(rng.choice(words) for _ in range(700_000))


def make_samples(corpus: str, n_docs: int, doc_tokens: int, seed: int) -> list[DocQASample]:
    """Distinct documents: slices of the corpus at random offsets (wrapping around)."""
    rng = random.Random(seed)
    n_chars = doc_tokens * CHARS_PER_TOKEN
    ring = corpus * (n_chars // len(corpus) + 2)
    samples = []
    for i in range(n_docs):
        start = rng.randrange(len(corpus))
        samples.append(DocQASample(id=str(i), source="bench", task="qa", document=ring[start: start + n_chars],
                                   question=f"Question {i}: who signed the ledger?", answers=["x"]))
    return samples


def timed(fn: Callable[[], list[int]]) -> tuple[float, list[int]]:
    start = time.perf_counter()
    counts = fn()
    return time.perf_counter() - start, counts


def main() -> None:
    args = parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    samples = make_samples(load_corpus(Path(args.corpus), args.seed), args.docs, args.doc_tokens, args.seed)

    def baseline() -> list[int]:
        return [len(tokenizer.encode(chat_prompt_text(tokenizer, s), add_special_tokens=False)) for s in samples]

    with tempfile.TemporaryDirectory() as cache_dir:
        methods = {
            "one-at-a-time tokenizer.encode (baseline)": baseline,
            "batched encode_batch, 1 process": lambda: count_prompt_tokens(
                samples, tokenizer, workers=1, batch_size=args.batch_size),
            f"batched, {args.workers} processes": lambda: count_prompt_tokens(
                samples, tokenizer, workers=args.workers, batch_size=args.batch_size),
            "batched + disk cache, cold": lambda: count_prompt_tokens(
                samples, tokenizer, cache_dir=cache_dir, batch_size=args.batch_size),
            "batched + disk cache, warm": lambda: count_prompt_tokens(samples, tokenizer, cache_dir=cache_dir),
        }
        results = {name: timed(fn) for name, fn in methods.items()}
    base_s, base_counts = results["one-at-a-time tokenizer.encode (baseline)"]
    for name, (_, counts) in results.items():
        if counts != base_counts:
            raise SystemExit(f"{name}: counts differ from the baseline")
    report(results, base_s, sum(base_counts), len(samples), args)


def report(results: dict[str, tuple[float, list[int]]], base_s: float, n_tokens: int, n_docs: int,
           args: argparse.Namespace) -> None:
    print(f"{n_docs} documents, {n_tokens} prompt tokens ({n_tokens // n_docs} per document), "
          f"{os.cpu_count()} CPU cores, batch size {args.batch_size}")
    print(f"{'method':<44} {'seconds':>9} {'docs/s':>9} {'tokens/s':>12} {'vs baseline':>12}")
    for name, (seconds, _) in results.items():
        print(f"{name:<44} {seconds:>9.3f} {n_docs / seconds:>9.1f} {n_tokens / seconds:>12,.0f} "
              f"{base_s / seconds:>11.2f}x")


if __name__ == "__main__":
    main()
