"""Copy pretraining: batch construction and that a fresh model actually learns to copy."""

import json
import math

import pytest
import torch

from longrl.config import ConfigError, CopyPretrainConfig, config_from_dict
from longrl.train.copy_pretrain import copy_batch, copy_eval, copy_pretrain, copy_token_ids


def _batch(seed: int, **kw):
    shape = dict(batch_size=8, min_span=3, max_span=6, max_gap=4, bos_id=1, pad_id=0) | kw
    return copy_batch(torch.Generator().manual_seed(seed), torch.arange(10, 60), **shape)


def test_copy_batch_labels_are_the_repeated_span():
    ids, labels = _batch(0)
    assert ids.shape == labels.shape == (8, 1 + 2 * 6 + 4)
    gaps = set()
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
        assert row_ids[0] == 1
        lab = [i for i, v in enumerate(row_labels) if v != -100]
        n = len(lab)
        assert 3 <= n <= 6 and lab == list(range(lab[0], lab[0] + n))
        span = row_ids[1:1 + n]
        assert [row_ids[i] for i in lab] == span == [row_labels[i] for i in lab]
        gap = lab[0] - 1 - n
        assert 0 <= gap <= 4
        gaps.add(gap)
        assert all(v == 0 for v in row_ids[lab[-1] + 1:])          # right padding only
        assert all(10 <= v < 60 for v in row_ids[1:lab[-1] + 1])
    assert len(gaps) > 1                                            # the offset varies


def test_row_vocab_limits_each_row_to_its_own_small_pool():
    ids, labels = _batch(1, batch_size=16, min_span=12, max_span=12, row_vocab=5)
    pools = []
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
        end = max(i for i, v in enumerate(row_labels) if v != -100) + 1
        pool = set(row_ids[1:end])
        assert len(pool) <= 5
        pools.append(frozenset(pool))
    assert len(set(pools)) > 1                  # a fresh pool per row, not one for the batch
    whole = _batch(1, batch_size=16, min_span=12, max_span=12)[0]
    assert max(len(set(r[1:13])) for r in whole.tolist()) > 5


def test_copy_batch_is_deterministic_per_seed():
    a, b, c = _batch(3), _batch(3), _batch(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_copy_pretrain_teaches_a_fresh_model_to_copy(tiny_tokenizer, tmp_path):
    from longrl.models import build_tiny_model

    model = build_tiny_model(tiny_tokenizer, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, seed=0)
    cfg = CopyPretrainConfig(steps=800, batch_size=16, lr=3e-3, min_span=8, max_span=16, max_gap=8)
    tokens = copy_token_ids(tiny_tokenizer)
    assert not set(tokens.tolist()) & set(tiny_tokenizer.all_special_ids) and len(tokens) > 300
    held = copy_batch(torch.Generator().manual_seed(99), tokens, 64, 8, 16, 8,
                      tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id)
    loss0, acc0 = copy_eval(model, *held)
    assert loss0 > 0.8 * math.log(len(tokens)) and acc0 < 0.05   # random init: a uniform guess
    metrics = copy_pretrain(model, tiny_tokenizer, cfg, seed=0, run_dir=tmp_path / "copy", progress=False)
    loss1, acc1 = copy_eval(model, *held)
    assert acc1 > 0.8 and loss1 < 1.0, (loss1, acc1)                # copies unseen random spans
    assert metrics["copy/steps"] == 800 and metrics["copy/acc"] > 0.8
    rows = [json.loads(line) for line in (tmp_path / "copy" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 801))
    assert not model.training


@pytest.mark.parametrize("key,value", [("steps", -1), ("min_span", 0), ("max_gap", -2), ("lr", 0.0), ("row_vocab", -1)])
def test_copy_pretrain_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"pipeline.tiny.copy_pretrain.{key}"):
        config_from_dict({"pipeline": {"tiny": {"copy_pretrain": {key: value}}}}, "x.yaml")


def test_min_span_above_max_span_is_rejected():
    with pytest.raises(ConfigError, match="min_span"):
        config_from_dict({"pipeline": {"tiny": {"copy_pretrain": {"min_span": 9, "max_span": 4}}}}, "x.yaml")
