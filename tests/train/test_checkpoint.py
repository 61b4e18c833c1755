"""Checkpoints: exact round trip, atomic layout, fallback past partial or corrupt checkpoints, pruning."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from longrl.models import build_tiny_model
from longrl.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from longrl.train.optim import build_optimizer, build_scheduler


def _setup(tok, seed=0):
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, seed=seed)
    opt = build_optimizer(model, 1e-3, 0.01, (0.9, 0.999))
    sched = build_scheduler(opt, 2, 10, "cosine")
    return model, opt, sched


def _train_step(model, opt, sched):
    ids = torch.arange(8).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    sched.step()


def test_round_trip_is_exact(tiny_tokenizer, tmp_path):
    model, opt, sched = _setup(tiny_tokenizer)
    _train_step(model, opt, sched)
    random.seed(7)
    torch.manual_seed(7)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, state={"sampler": {"pos": 3}})
    expected_rand = (random.random(), torch.rand(3))
    _train_step(model, opt, sched)
    ref = {k: v.clone() for k, v in model.state_dict().items()}

    other, opt2, sched2 = _setup(tiny_tokenizer, seed=1)
    trainer = load_checkpoint(path, model=other, optimizer=opt2, scheduler=sched2)
    assert trainer == {"step": 1, "state": {"sampler": {"pos": 3}}}
    assert (random.random(), torch.rand(3))[0] == expected_rand[0]
    _train_step(other, opt2, sched2)
    for k, v in other.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert sched2.last_epoch == sched.last_epoch


def test_fallback_past_partial_and_corrupt(tiny_tokenizer, tmp_path, caplog):
    model, opt, sched = _setup(tiny_tokenizer)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, optimizer=opt, scheduler=sched, keep=5)
    (tmp_path / ".tmp-step-00000004").mkdir()  # a write killed before the rename: never a candidate
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000002", "step-00000003"]
    (tmp_path / "step-00000003" / "manifest.json").unlink()  # partial
    with (tmp_path / "step-00000002" / "optimizer.pt").open("r+b") as f:  # corrupt, same size
        f.seek(10)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify_checkpoint(tmp_path / "step-00000003")
    with pytest.raises(CheckpointError, match="sha256"):
        verify_checkpoint(tmp_path / "step-00000002")
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).name == "step-00000001"
    assert "falling back" in caplog.text and "step-00000003" in caplog.text
    (tmp_path / "step-00000001" / "trainer_state.pt").write_bytes(b"x")  # truncated
    assert latest_checkpoint(tmp_path) is None


def test_keeps_newest_n(tiny_tokenizer, tmp_path):
    model, opt, sched = _setup(tiny_tokenizer)
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, model=model, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert verify_checkpoint(tmp_path / "step-00000004") == 4
