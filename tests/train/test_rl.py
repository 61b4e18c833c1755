"""The RL loop: a learnable toy task, exact micro-batch accumulation, dynamic sampling, NaN handling."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny_rl_job import BASE, QuarterVocabReward, Score, make_samples
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.algo.filtering import DynamicSamplingError
from longrl.config import load_config
from longrl.curriculum.phases import PhaseSampler
from longrl.train import rl
from longrl.train.rl import Group, NonFiniteError, Seq, group_advantages, make_pieces, mini_batches, train_rl


def _run(model_dir, tmp_path, overrides, reward=None, **kwargs):
    cfg = load_config(None, BASE + ["reward.overlong.enabled=false"] + overrides)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    sampler = PhaseSampler(make_samples(), batch_size=cfg.rl.prompts_per_step, seed=cfg.seed)
    result = train_rl(model, tok, sampler, reward or QuarterVocabReward(tok), cfg, run_dir=tmp_path, **kwargs)
    return model, result


def _history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_reward_rises_on_learnable_task(tiny_model_dir, tmp_path):
    """Reward = share of completion tokens with id % 4 == 0 (chance 0.25): it must rise within 12 steps."""
    before = _params(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    model, result = _run(tiny_model_dir, tmp_path, [
        "rl.steps=12", "rl.prompts_per_step=4", "rollout.group_size=8", "rollout.max_new_tokens=4",
        "rl.optim.lr=0.02", "save_every=0", "algo.clip_high=0.28"])
    after = _params(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    hist = _history(tmp_path)
    first = sum(h["reward/score"] for h in hist[:3]) / 3
    last = sum(h["reward/score"] for h in hist[-3:]) / 3
    assert last > first + 0.15, [round(h["reward/score"], 3) for h in hist]
    assert {"reward/acc", "actor/entropy", "loss/clip_frac", "response_length/mean",
            "sampling/filtered_groups", "perf/tokens_per_s"} <= {k for h in hist for k in h}
    assert (tmp_path / "final" / "config.json").is_file()
    assert (tmp_path / "rollout_samples.jsonl").is_file()


def _capture_grads(monkeypatch) -> list[list[torch.Tensor]]:
    """Record the summed gradients handed to every optimizer update."""
    from longrl.train import rl

    real, seen = rl.synced_update, []

    def spy(params, *args, **kwargs):
        seen.append([p.grad.detach().clone() for p in params])
        return real(params, *args, **kwargs)

    monkeypatch.setattr(rl, "synced_update", spy)
    return seen


def test_micro_batching_and_shared_forward_do_not_change_the_update(tiny_model_dir, tmp_path, monkeypatch):
    """Token-budget micro-batches and the shared-prompt forward give the same gradients (exact token-mean)."""
    common = ["rl.steps=2", "save_every=0", "rl.mini_batches=2", "rl.prompts_per_step=2",
              "rl.dynamic_sampling.enabled=false"]
    grads = _capture_grads(monkeypatch)
    big, _ = _run(tiny_model_dir, tmp_path / "a", common + ["rl.micro_token_budget=100000"])
    small, _ = _run(tiny_model_dir, tmp_path / "b", common + ["rl.micro_token_budget=1"])
    naive, _ = _run(tiny_model_dir, tmp_path / "c", common + ["rl.shared_prompt_forward=false"])
    assert len(grads) == 12  # 3 runs x 2 steps x 2 mini-batches
    for g_big, g_small, g_naive in zip(grads[0:4], grads[4:8], grads[8:12]):
        for a, b, c in zip(g_big, g_small, g_naive):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-3)
    for k, v in _params(big).items():  # Adam amplifies float noise on near-zero gradients: loose bound
        torch.testing.assert_close(_params(small)[k], v, atol=1e-4, rtol=0)
        torch.testing.assert_close(_params(naive)[k], v, atol=1e-4, rtol=0)
    assert "loss/ratio_max" in _history(tmp_path / "a")[-1]


def test_group_advantages_and_pieces():
    def group(i, rewards, lens):
        return Group(index=i, sample=make_samples(1)[0], prompt_ids=[1, 2, 3], completions=[[5] * n for n in lens],
                     texts=["x"] * len(lens), finish=["stop"] * len(lens), scores=rewards, accs=rewards,
                     preds=[None] * len(lens), penalties=[0.0] * len(lens))

    groups = [group(0, [1.0, 0.0], [2, 3]), group(1, [0.0, 0.0, 1.0], [4, 0, 1])]
    adv = group_advantages(groups, "drgrpo", 1e-6)
    # Dr.GRPO: r - mean_g -> [0.5, -0.5] and [-1/3, -1/3, 2/3]
    assert adv[0] == pytest.approx([0.5, -0.5])
    assert adv[1] == pytest.approx([-1 / 3, -1 / 3, 2 / 3])
    seqs = rl.training_sequences(groups, adv)
    assert [len(s.completion_ids) for s in seqs] == [2, 3, 4, 1]  # the empty rollout carries no tokens
    # shared forward, budget 8: room = 8 - P(3) = 5 -> group 0: 2+3 fits; group 1: 4+1 fits
    assert make_pieces(seqs, 8, shared=True) == [[0, 1], [2, 3]]
    # budget 7: room 4 -> [2], [3] for group 0 and [4], [1]... packed in order: [4] then [1]
    assert make_pieces(seqs, 7, shared=True) == [[0], [1], [2], [3]]
    # naive, budget 8: costs P + |o| = [5, 6] and [7, 4] -> every sequence alone
    assert make_pieces(seqs, 8, shared=False) == [[0], [1], [2], [3]]
    assert mini_batches([[0, 1], [2], [3]], seqs, 2) == [[[0, 1]], [[2], [3]]]
    assert mini_batches([[0, 1], [2], [3]], seqs, 1) == [[[0, 1], [2], [3]]]
    assert isinstance(seqs[0], Seq) and seqs[0].mask.all()


def test_dynamic_sampling_cap_policy(tiny_model_dir, tmp_path):
    """A constant reward leaves every group zero-variance: 'raise' stops, 'proceed' skips the update."""

    def constant(samples, responses):
        return [Score(1.0, 1.0, r) for r in responses]

    with pytest.raises(DynamicSamplingError, match="max_rounds"):
        _run(tiny_model_dir, tmp_path / "a", ["rl.steps=1", "rl.dynamic_sampling.on_cap=raise"], reward=constant)
    before = _params(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    seen = []
    model, _ = _run(tiny_model_dir, tmp_path / "b", ["rl.steps=1"], reward=constant,
                    on_accuracies=lambda s, accs: seen.append((s.id, accs)))
    for k, v in _params(model).items():
        assert torch.equal(v, before[k])
    h = _history(tmp_path / "b")[-1]
    assert h["sampling/cap_hit"] == 1.0 and h["sampling/filtered_groups"] == 4.0 and h["sampling/rounds"] == 2.0
    assert len(seen) == 4 and all(accs == [1.0] * 4 for _, accs in seen)


def test_nonfinite_loss_skips_updates_then_stops(tiny_model_dir, tmp_path, monkeypatch):
    real = rl.piece_loss

    def poisoned(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        return loss * float("nan"), m

    monkeypatch.setattr(rl, "piece_loss", poisoned)
    before = _params(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    with pytest.raises(NonFiniteError, match="2 consecutive"):
        _run(tiny_model_dir, tmp_path, ["rl.steps=4", "rl.max_nonfinite_in_row=2",
                                        "rl.dynamic_sampling.enabled=false"])
    assert [h["actor/skipped_updates"] for h in _history(tmp_path)] == [1.0]
    ckpt = torch.load(tmp_path / "checkpoints" / "step-00000001" / "trainer_state.pt", weights_only=False)
    assert ckpt["state"]["skipped_updates"] == 1
    from longrl.train.checkpoint import load_model_weights

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    load_model_weights(model, tmp_path / "checkpoints" / "step-00000001" / "model")
    for k, v in _params(model).items():
        assert torch.equal(v, before[k])


def test_kl_reference_and_extra_state(tiny_model_dir, tmp_path):
    class Counter:
        def __init__(self):
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, s):
            self.n = s["n"]

    counter = Counter()

    def on_accs(sample, accs):
        counter.n += 1

    _run(tiny_model_dir, tmp_path, ["rl.steps=2", "algo.kl_coef=0.1", "rl.dynamic_sampling.enabled=false"],
         on_accuracies=on_accs, extra_state={"counter": counter})
    hist = _history(tmp_path)
    assert hist[0]["loss/kl"] == pytest.approx(0.0, abs=1e-6) and hist[1]["loss/kl"] > 0
    restored = Counter()
    model, result = _run(tiny_model_dir, tmp_path, ["rl.steps=2", "algo.kl_coef=0.1",
                                                    "rl.dynamic_sampling.enabled=false"],
                         extra_state={"counter": restored})
    assert restored.n == counter.n == 4  # re-entering a finished phase restores its state, runs nothing
    assert len(_history(tmp_path)) == 2


def test_aepo_batch_state_is_checkpointed_and_resume_equals_uninterrupted(tiny_model_dir, tmp_path, monkeypatch):
    """Batch entropies are scripted (the measured value is replaced) so the hysteresis state matters:
    2.0 switches AEPO on, 0.7 (inside the band) keeps it on only if the state survived the restart."""
    from longrl.algo import aepo

    script = [2.0, 0.7, 0.7, 0.3]
    over = ["rl.steps=4", "algo.entropy_mask_level=batch", "algo.entropy_low=0.5", "algo.entropy_high=1.0",
            "rl.dynamic_sampling.enabled=false"]

    def scripted(values):
        it = iter(values)
        monkeypatch.setattr(aepo, "batch_mean_entropy", lambda ent_sum, n: next(it))

    scripted(script)
    full, _ = _run(tiny_model_dir, tmp_path / "full", over)
    full_hist = _history(tmp_path / "full")
    assert [h["aepo/active"] for h in full_hist] == [1.0, 1.0, 1.0, 0.0]
    assert all(0.0 <= h["aepo/dropped_frac"] <= 1.0 for h in full_hist)
    assert full_hist[0]["aepo/dropped_frac"] > 0 and full_hist[3]["aepo/dropped_frac"] == 0.0

    real_step = rl.rl_step

    def stop_at_third(run, step):
        if step == 2:
            raise KeyboardInterrupt
        return real_step(run, step)

    scripted(script)
    monkeypatch.setattr(rl, "rl_step", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model_dir, tmp_path / "cut", over)
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "step-00000002" / "trainer_state.pt", weights_only=False)
    assert saved["state"]["aepo"] == {"active": True}
    monkeypatch.setattr(rl, "rl_step", real_step)
    scripted(script[2:])
    resumed, _ = _run(tiny_model_dir, tmp_path / "cut", over)
    assert [h["aepo/active"] for h in _history(tmp_path / "cut")][-2:] == [1.0, 0.0]
    for k, v in _params(full).items():
        torch.testing.assert_close(_params(resumed)[k], v)
