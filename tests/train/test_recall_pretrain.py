"""Recall pretraining: row construction, config errors, and that a fresh model learns to look facts up."""

import json
import random

import pytest

from longrl.config import ConfigError, CopyPretrainConfig, RecallPretrainConfig, config_from_dict
from longrl.data.synth import generate
from longrl.train.recall_pretrain import (
    fact_sentences,
    recall_batch,
    recall_eval,
    recall_pretrain,
    recall_row,
)

STEPS, LR, TOKENS = 300, 3e-3, 48          # recall pretraining in the learning test


def test_fact_sentences_split_a_synthetic_document():
    doc = generate(1, 64, seed=3, split="recall")[0].document
    sentences = fact_sentences(doc)
    assert len(sentences) >= 4 and all(s.endswith(".") and "\n" not in s for s in sentences)
    assert " ".join(sentences) == " ".join(doc.split())          # nothing lost, nothing added


def test_recall_row_restates_every_sentence_once_with_the_loss_on_the_restatement(tiny_tokenizer):
    doc = generate(1, 64, seed=5, split="recall")[0].document
    ids, labels, values = recall_row(tiny_tokenizer, doc, random.Random(0))
    head = len(tiny_tokenizer.encode(doc + "\n\n", add_special_tokens=False))
    assert labels[:head] == [-100] * head and labels[head:] == ids[head:]
    restated = tiny_tokenizer.decode(ids[head:])
    assert sorted(s.strip() for s in fact_sentences(restated)) == sorted(fact_sentences(doc))
    assert fact_sentences(restated) != fact_sentences(doc)       # shuffled (this seed moves at least one)
    last_words = [s.rstrip(".").split()[-1] for s in fact_sentences(restated)]
    assert len(values) == len(last_words)
    for pos, word in zip(values, last_words):
        assert tiny_tokenizer.decode(ids[pos:pos + 2]) == tiny_tokenizer.decode(ids[pos:pos + 1]) + "."
        assert word.endswith(tiny_tokenizer.decode(ids[pos:pos + 1]).strip())


def test_recall_batch_pads_right_and_masks(tiny_tokenizer):
    docs = [g.document for g in generate(3, 48, seed=1, split="recall")]
    rows = [recall_row(tiny_tokenizer, d, random.Random(i)) for i, d in enumerate(docs)]
    ids, labels, mask = recall_batch(rows, pad_id=0)
    assert ids.shape == labels.shape == mask.shape == (3, max(len(r[0]) for r in rows))
    for r, (row_ids, row_labels, _) in enumerate(rows):
        n = len(row_ids)
        assert ids[r, :n].tolist() == row_ids and mask[r, :n].sum() == n and mask[r, n:].sum() == 0
        assert labels[r, n:].eq(-100).all() and labels[r, :n].tolist() == row_labels


@pytest.fixture(scope="module")
def synth_tokenizer():
    """A BPE tokenizer trained on synthetic documents (names and values become single tokens), as the demo's."""
    from longrl.models import build_tiny_tokenizer

    return build_tiny_tokenizer([g.document for g in generate(200, 64, seed=0, split="corpus")], vocab_size=600)


def test_recall_pretrain_teaches_a_copy_pretrained_model_to_look_facts_up(synth_tokenizer, tmp_path):
    from longrl.models import build_tiny_model
    from longrl.train.copy_pretrain import copy_pretrain

    tiny_tokenizer = synth_tokenizer
    model = build_tiny_model(tiny_tokenizer, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, seed=0)
    copy_pretrain(model, tiny_tokenizer, CopyPretrainConfig(steps=800, batch_size=16, lr=3e-3, min_span=8,
                  max_span=16, max_gap=8), seed=0, run_dir=tmp_path / "copy", progress=False)
    cfg = RecallPretrainConfig(steps=STEPS, batch_size=16, lr=LR, target_tokens=TOKENS, documents=500)
    held_docs = [g.document for g in generate(48, TOKENS, seed=7, split="test-heldout")]
    held = [recall_row(tiny_tokenizer, d, random.Random(i)) for i, d in enumerate(held_docs)]
    pad = tiny_tokenizer.pad_token_id
    _, acc0 = recall_eval(model, held, pad)
    metrics = recall_pretrain(model, tiny_tokenizer, cfg, families=["lookup", "multihop", "numeric", "mcq"], seed=0,
                              run_dir=tmp_path / "recall", progress=False)
    _, acc1 = recall_eval(model, held, pad)
    assert acc1 > max(0.5, acc0 + 0.3), (acc0, acc1)             # values of unseen documents' facts
    assert metrics["recall/steps"] == STEPS and abs(metrics["recall/value_acc"] - acc1) < 0.2
    rows = [json.loads(line) for line in (tmp_path / "recall" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert not model.training



@pytest.mark.parametrize("key,value", [("steps", -1), ("lr", 0.0), ("target_tokens", 4), ("documents", 0),
                                       ("batch_size", 0)])
def test_recall_pretrain_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"pipeline.tiny.recall_pretrain.{key}"):
        config_from_dict({"pipeline": {"tiny": {"recall_pretrain": {key: value}}}}, "x.yaml")
