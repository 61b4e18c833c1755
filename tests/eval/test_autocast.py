"""``eval.autocast`` / ``rollout.autocast``: in-process generation (held-out evaluation, ``longrl eval
--model-path``, HF rollouts) runs its forward passes under bfloat16 autocast when asked, and in the weights'
own dtype otherwise; training is untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.config import EvalConfig
from longrl.data.records import DocQASample
from longrl.eval.harness import InProcessBackend, Job
from longrl.eval.heldout import evaluate_sets


def _sample(i: int) -> DocQASample:
    return DocQASample(id=f"s{i}", source="synthetic", task="qa", document="Kalor lives in Maple. " * 4,
                       question="Where does Kalor live?", answers=["Maple"], metadata={"family": "lookup"})


def _record_autocast(model):
    seen = []
    model.model.layers[0].register_forward_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    return seen


@pytest.mark.parametrize("autocast", ["none", "bfloat16"])
def test_heldout_evaluation_generates_under_the_configured_autocast(tiny_model_dir, tmp_path, autocast):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    seen = _record_autocast(model)
    cfg = EvalConfig(max_new_tokens=4, temperature=0.7, top_p=0.95, max_input_tokens=512, autocast=autocast)
    table, records = evaluate_sets(model, tok, {"64": [_sample(i) for i in range(3)]}, cfg, tmp_path / "gen",
                                   batch_size=2, require_think=False)
    assert table["n"] == 3 and len(records) == 3
    assert seen and set(seen) == ({(False, torch.get_autocast_dtype("cpu"))} if autocast == "none"
                                  else {(True, torch.bfloat16)})
    assert next(model.parameters()).dtype == torch.float32          # the weights are left as loaded
    assert not torch.is_autocast_enabled("cpu")                     # and autocast is off again afterwards


def test_in_process_backend_autocast(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    seen = _record_autocast(model)
    messages = [{"role": "user", "content": "Where does Kalor live?"}]
    done = []
    InProcessBackend(model, tok, autocast="bfloat16").run(
        [Job(("b", "s0", 0), messages, 10, False)], lambda job, gen: done.append(gen), max_new_tokens=3, temperature=0.7,
        top_p=0.95)
    assert len(done) == 1 and done[0].finish_reason in ("stop", "length")
    assert seen and all(s == (True, torch.bfloat16) for s in seen)


def test_rollouts_sample_under_autocast_and_training_stays_float32(tiny_model_dir):
    from longrl.config import Config
    from longrl.train.rl import build_generator

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    seen = _record_autocast(model)
    cfg = Config()
    cfg.rollout.autocast = "bfloat16"
    gen = build_generator(cfg, model, tok)
    out = gen.generate([tok.encode("Where does Kalor live?")], 3, 4)
    assert len(out[0]) == 3 and seen and all(s == (True, torch.bfloat16) for s in seen)
    seen.clear()
    model(torch.tensor([tok.encode("a b c")])).logits.sum().backward()  # a training forward after the rollouts
    assert seen == [(False, torch.get_autocast_dtype("cpu"))]


@pytest.mark.parametrize("autocast", ["none", "bfloat16"])
def test_rl_training_forward_runs_its_body_under_rl_autocast(tiny_model_dir, autocast):
    """``rl.autocast``: the loss's forward (and backward) runs the transformer body under bfloat16 autocast;
    the log-probs come back float32, close to the float32 ones, and gradients reach the float32 weights."""
    from types import SimpleNamespace

    from longrl.config import Config
    from longrl.train.rl import Seq, piece_logprobs

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tok.encode("Kalor lives in Maple. Where does Kalor live?")
    seqs = [Seq(group=0, prompt_ids=prompt, completion_ids=tok.encode(c), adv=1.0)
            for c in ("Maple", "in Maple it is", "Cedar .")]
    cfg = Config()
    with torch.no_grad():
        ref_BT, _, mask_BT = piece_logprobs(SimpleNamespace(cfg=cfg), model, seqs, with_entropy=False)
    cfg.rl.autocast = autocast
    seen = _record_autocast(model)
    logps_BT, ent_BT, mask2_BT = piece_logprobs(SimpleNamespace(cfg=cfg), model, seqs, with_entropy=True)
    assert seen and set(seen) == ({(False, torch.get_autocast_dtype("cpu"))} if autocast == "none"
                                  else {(True, torch.bfloat16)})
    assert logps_BT.dtype == ent_BT.dtype == torch.float32 and torch.equal(mask_BT, mask2_BT)
    diff = (logps_BT - ref_BT).abs()[mask_BT].max()
    assert (diff == 0) if autocast == "none" else (0 < diff < 0.1)   # bf16 rounding, not a different model
    (logps_BT[mask_BT].sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert not torch.is_autocast_enabled("cpu")
