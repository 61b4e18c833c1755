"""Warm-up SFT: targets, exact chunked loss, schedule and packing helpers, and SFT -> RL from one YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longrl.data.records import DocQASample
from longrl.models import build_tiny_model
from longrl.train.optim import lr_factor, pack_by_token_budget
from longrl.train.sft import build_examples, loss_weight, nll_sum, nll_sums, sft_target, split_heldout

ROOT = Path(__file__).resolve().parents[2]


def _sample(i: int, **meta) -> DocQASample:
    return DocQASample(id=f"s{i}", source="toy", task="qa", document="The capital of Veridia is Port Amber.",
                       question="What is the capital of Veridia?", answers=["Port Amber"], metadata=meta)


def test_target_text():
    assert sft_target(_sample(0, reasoning="The text says so.")) == (
        "<think>\nThe text says so.\n</think>\n\nTherefore, the answer is Port Amber.")
    assert sft_target(_sample(0, reasoning="x", response="full")) == "full"


def test_examples_end_with_eos(tiny_tokenizer):
    (ex,), skipped = build_examples(tiny_tokenizer, [_sample(0, reasoning="r")])
    assert skipped == 0 and ex.target_ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ex.prompt_ids).endswith("<|im_start|>assistant\n")
    _, skipped = build_examples(tiny_tokenizer, [_sample(0, reasoning="r")], max_seq_tokens=5)
    assert skipped == 1


def _reference_nll(model, exs) -> tuple[float, float]:
    """(target NLL, prompt NLL) summed over ``exs``, one example at a time from full logits."""
    ref_t = ref_p = 0.0
    for e in exs:
        ids = torch.tensor([e.prompt_ids + e.target_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        p = len(e.prompt_ids)
        ref_t -= sum(float(logp[p - 1 + t, tok]) for t, tok in enumerate(e.target_ids))
        ref_p -= sum(float(logp[t - 1, e.prompt_ids[t]]) for t in range(1, p))
    return ref_t, ref_p


def test_chunked_loss_matches_full_logits_and_is_exact_across_micro_batches(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, hidden_size=32, num_layers=2)
    exs, _ = build_examples(tiny_tokenizer, [_sample(0, reasoning="short"), _sample(1, reasoning="a bit longer r")])
    n_targets = sum(len(e.target_ids) for e in exs)
    ref, _ = _reference_nll(model, exs)
    grads = []
    for budget in (1, 10_000):  # every example alone vs one padded micro-batch
        model.zero_grad()
        total = nll_sum(model, exs, budget, chunk=7, scale=n_targets, backward=True)
        assert total == pytest.approx(ref, rel=1e-5)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_prompt_loss_weight_adds_weighted_prompt_nll(tiny_tokenizer):
    """nll_sums with weight w: (target NLL, prompt NLL) from full logits; the backward pass is the gradient
    of (target + w * prompt) / loss_weight, and loss_weight = n_target + w * (prompt tokens - 1 per example)."""
    model = build_tiny_model(tiny_tokenizer, hidden_size=32, num_layers=2)
    exs, _ = build_examples(tiny_tokenizer, [_sample(0, reasoning="short"), _sample(1, reasoning="a bit longer r")])
    ref_t, ref_p = _reference_nll(model, exs)
    n_t, n_p = sum(len(e.target_ids) for e in exs), sum(len(e.prompt_ids) - 1 for e in exs)
    assert loss_weight(exs, 0.0) == n_t and loss_weight(exs, 0.5) == n_t + 0.5 * n_p
    model.zero_grad()
    assert nll_sums(model, exs, 10_000, chunk=7, scale=1.0, backward=False) == (pytest.approx(ref_t, rel=1e-5), 0.0)
    total, prompt = nll_sums(model, exs, 1, chunk=7, scale=loss_weight(exs, 0.5), backward=True,
                             prompt_loss_weight=0.5)
    assert (total, prompt) == (pytest.approx(ref_t, rel=1e-5), pytest.approx(ref_p, rel=1e-5))
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    seqs = [torch.tensor([e.prompt_ids + e.target_ids]) for e in exs]
    loss = 0.0
    for e, ids in zip(exs, seqs):
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        p = len(e.prompt_ids)
        tgt = -sum(logp[p - 1 + t, tok] for t, tok in enumerate(e.target_ids))
        prm = -sum(logp[t - 1, e.prompt_ids[t]] for t in range(1, p))
        loss = loss + (tgt + 0.5 * prm) / loss_weight(exs, 0.5)
    loss.backward()
    for a, b in zip(got, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_schedule_packing_and_split():
    # warm-up 2 of 10 cosine steps: (s+1)/2 for s < 2, then 0.5 * (1 + cos(pi * (s - 2) / 8))
    assert [lr_factor(s, 2, 10, "cosine") for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    assert lr_factor(5, 0, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 3, 10, "constant") == 1.0
    assert pack_by_token_budget([3, 4, 2, 9, 1], 6) == [[0], [1, 2], [3], [4]]
    train, held = split_heldout([_sample(i) for i in range(20)], 0.1, seed=0)
    assert len(held) == 2 and len(train) == 18 and not {s.id for s in held} & {s.id for s in train}


def test_sft_then_rl_from_one_yaml(tmp_path):
    """configs/tiny_cpu.yaml, shrunk by overrides: `longrl sft --init-tiny` then `longrl rl`."""
    from longrl.cli import main
    from longrl.data.readers import write_jsonl
    from longrl.data.synth import generate

    data = tmp_path / "train.jsonl"
    write_jsonl(generate(24, 40, seed=0), data)
    out = tmp_path / "run"
    common = [f"output_dir={out}", f"data.sources=[{{path: {data}, format: synthetic}}]", "logging.progress=false",
              "logging.tensorboard=false", "rollout.max_new_tokens=24", "reward.overlong.buffer_tokens=4"]
    cfg = str(ROOT / "configs" / "tiny_cpu.yaml")
    assert main(["sft", "--config", cfg, "--init-tiny", "--tiny-hidden", "32", f"model.path={tmp_path / 'init'}",
                 "sft.steps=6", "sft.eval_every=3", *common]) == 0
    sft_rows = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert sft_rows[-1]["sft/loss"] < sft_rows[0]["sft/loss"] and "sft/heldout_loss" in sft_rows[-1]
    assert main(["rl", "--config", cfg, f"model.path={out / 'sft' / 'final'}", "rl.steps=2",
                 "rl.prompts_per_step=2", *common]) == 0
    rows = [json.loads(x) for x in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and (out / "rl" / "final" / "model.safetensors").is_file()


def test_sft_rerun_rules(tmp_path, tiny_model_dir, capsys):
    """`longrl sft` on an existing run: a finished run is reported and left untouched; an interrupted one
    announces its resume; a change that alters training is refused unless --allow-config-change."""
    import shutil

    from longrl.cli import main
    from longrl.data.readers import write_jsonl
    from longrl.data.synth import generate

    data = tmp_path / "train.jsonl"
    write_jsonl(generate(16, 40, seed=0), data)
    run = tmp_path / "run" / "sft"
    args = ["sft", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), f"model.path={tiny_model_dir}",
            f"output_dir={tmp_path / 'run'}", f"data.sources=[{{path: {data}, format: synthetic}}]",
            "logging.progress=false", "sft.steps=3", "sft.batch_size=4", "save_every=1", "keep_checkpoints=5",
            "sft.eval_every=0"]
    assert main(args) == 0
    done = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("SFT done"))
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert main(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "already complete" in x)
    assert line.startswith("SFT already complete at step 3") and line.split(":", 1)[1] == done.split(":", 1)[1]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == files

    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step-00000003")
    assert main(args + ["sft.optim.lr=0.1"]) == 2
    assert "'sft.optim.lr'" in capsys.readouterr().err
    assert main(args + ["logging.tensorboard=false"]) == 0
    err = capsys.readouterr().err
    assert f"resumed from step 2 (checkpoint {run / 'checkpoints' / 'step-00000002'})" in err
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
