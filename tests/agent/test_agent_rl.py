"""Agent RL: the trajectory advantage reaches every turn, the loss counts every turn's tokens, the
hybrid reward scores the answer turn only, retrospective sampling sees every group, and a kill -9 in the
middle of a trajectory batch resumes to the same weights and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from longrl.agent import Trajectory, Turn
from longrl.algo.advantages import compute_advantages
from longrl.config import load_config
from longrl.curriculum.samplers import CurriculumSampler, PhaseSpec
from longrl.data.records import DocQASample
from longrl.train import agent_rl
from longrl.train.agent_rl import AgentGroup, score_groups, train_agent_rl, turn_sequences

JOB = Path(__file__).with_name("_agent_rl_job.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
sys.path.insert(0, str(JOB.parent))
from _agent_rl_job import BASE, QuarterVocabReward, make_samples  # noqa: E402


def _turn(kind: str, prompt: list[int], out: list[int]) -> Turn:
    return Turn(kind=kind, prompt="p", prompt_ids=prompt, completion_ids=out, output="o", finish_reason="stop")


def _sample(i: int) -> DocQASample:
    return DocQASample(id=f"q{i}", source="toy", task="qa", document="d", question="q", answers=["Norwick"])


def test_trajectory_advantage_is_broadcast_to_every_turn():
    # question 0: two trajectories sharing the first prompt [1, 2]; question 1: one trajectory
    t_a = Trajectory([_turn("memory", [1, 2], [5, 6]), _turn("memory", [3], [7]), _turn("answer", [4], [8, 9, 9])])
    t_b = Trajectory([_turn("memory", [1, 2], [5]), _turn("memory", [3, 3], []), _turn("answer", [4, 4], [8])])
    t_c = Trajectory([_turn("memory", [9], [1]), _turn("answer", [9, 9], [2])])
    groups = [AgentGroup(0, _sample(0), [t_a, t_b], scores=[1.0, 0.0], penalties=[0.0, -0.5]),
              AgentGroup(1, _sample(1), [t_c], scores=[1.0], penalties=[0.0])]
    seqs = turn_sequences(groups, "grpo", 1e-6)
    adv = compute_advantages(torch.tensor([1.0, -0.5, 1.0], dtype=torch.float64), [0, 0, 1], mode="grpo").tolist()
    by_completion = {(tuple(s.prompt_ids), tuple(s.completion_ids)): s.adv for s in seqs}
    assert by_completion == {((1, 2), (5, 6)): adv[0], ((3,), (7,)): adv[0], ((4,), (8, 9, 9)): adv[0],
                             ((1, 2), (5,)): adv[1], ((4, 4), (8,)): adv[1],  # the empty turn carries no tokens
                             ((9,), (1,)): adv[2], ((9, 9), (2,)): adv[2]}
    assert adv[0] > 0 > adv[1] and adv[2] == 0.0
    groups_in_order = [s.group for s in seqs]
    assert groups_in_order == sorted(groups_in_order) and groups_in_order[:2] == [0, 0]  # one shared-prompt group
    assert all(len({tuple(s.prompt_ids) for s in seqs if s.group == g}) == 1 for g in set(groups_in_order))


def test_the_hybrid_reward_scores_the_answer_turn_and_gives_nothing_for_an_empty_one(tiny_model_dir):
    from longrl.train.rl import make_reward_fn

    cfg = load_config(None, ["reward.require_think=false"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    memory = _turn("memory", [1], [2])
    memory.output = memory.memory = "The answer is Norwick."  # the right answer only in the memory
    answers = ["<think>from memory</think> Therefore, the answer is Norwick.", "", "Therefore, the answer is ."]
    trajs = [Trajectory([memory, _turn("answer", [3], [4])]) for _ in answers]
    for t, text in zip(trajs, answers):
        t.turns[-1].output = text
    run = type("R", (), {})()  # the two fields score_groups reads
    run.reward_fn, run.cfg = make_reward_fn(cfg.reward), cfg
    agent = agent_rl.MemoryAgent(tok, cfg.agent, max_new_tokens=16)
    g = AgentGroup(0, _sample(0), trajs)
    score_groups(run, agent, [g])
    assert g.accs == [1.0, 0.0, 0.0] and g.scores[0] == 1.0 and g.scores[1:] == [0.0, 0.0]


def _cfg(*extra: str):
    return load_config(None, BASE + ["rl.steps=2", "rl.dynamic_sampling.enabled=false", "logging.jsonl=true",
                                     "logging.rollout_samples=100", *extra])


def test_agent_rl_trains_on_every_turn(tiny_model_dir, tmp_path, monkeypatch):
    import longrl.train.rl as rl

    seen_tokens: list[int] = []
    real = rl.policy_loss

    def spy(*args, **kwargs):
        seen_tokens.append(kwargs["num_tokens"])
        return real(*args, **kwargs)

    monkeypatch.setattr(rl, "policy_loss", spy)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg()
    samples = make_samples()
    from longrl.curriculum.phases import PhaseSampler

    sampler = PhaseSampler(samples, batch_size=cfg.rl.prompts_per_step, seed=0)
    res = train_agent_rl(model, tok, sampler, QuarterVocabReward(tok), cfg, run_dir=tmp_path / "run")
    assert res.steps == 2 and (tmp_path / "run" / "final").is_dir()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    dumps = [json.loads(x) for x in (tmp_path / "run" / "rollout_samples.jsonl").read_text().splitlines()]
    for step, row in enumerate(rows, 1):
        trajs = [d for d in dumps if d["step"] == step]
        assert len(trajs) == 2 * 3  # every trajectory of the step (dynamic sampling off: all trained on)
        turn_tokens = sum(t["completion_tokens"] for d in trajs for t in d["turns"])
        assert row["agent/train_tokens"] == turn_tokens
        assert row["agent/turns_mean"] == 4.0  # 3 memory turns + the answer
        assert seen_tokens[step - 1] == turn_tokens  # the loss's token-mean denominator counts every turn
        assert all(d["turns"][-1]["output"] == d["response"] for d in trajs)


def test_retrospective_sampling_records_every_group(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    samples = make_samples()
    for i, s in enumerate(samples):
        s.n_tokens = 100 if i < 4 else 300  # four in phase 1, two in phase 2
    sampler = CurriculumSampler(samples, [PhaseSpec(200, name="p1"), PhaseSpec(400, name="p2")], batch_size=2,
                                seed=0, hard_threshold=0.0)
    seen = []

    def record(sample, accs):
        seen.append((sample.id, len(accs)))
        sampler.record(sample, accs)

    train_agent_rl(model, tok, sampler, QuarterVocabReward(tok), _cfg(), run_dir=tmp_path / "run",
                   on_accuracies=record, extra_state={"curriculum": sampler})
    assert len(seen) == 2 * 2 and all(n == 3 for _, n in seen)
    assert {k for k, _ in seen} <= {s.id for s in samples}
    assert all(0.0 <= sampler.pool.difficulty(f"toy/{k}") <= 1.0 for k, _ in seen)
    unsolved = {k for k, _ in seen if sampler.pool.difficulty(f"toy/{k}") > 0}
    assert sampler.advance()["retro/pool_size"] == len(unsolved)  # every unsolved one goes to the pool


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_kill_9_mid_trajectory_batch_resumes_exactly(tiny_model_dir, tmp_path):
    cmd = [sys.executable, str(JOB), str(tiny_model_dir)]
    straight = tmp_path / "straight"
    subprocess.run([*cmd, str(straight)], check=True, env=ENV, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    calls = killed.with_suffix(".calls")
    proc = subprocess.Popen([*cmd, str(killed)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step-00000002" / "manifest.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    at_checkpoint = _lines(calls)
    while _lines(calls) < at_checkpoint + 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # step 3's trajectories are under way: some turns generated, not all
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the job finished before it could be killed"
    assert not (killed / "final").exists()
    done = sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert done[-1] == "step-00000002"

    resumed = subprocess.run([*cmd, str(killed)], check=True, env=ENV, capture_output=True, text=True, timeout=300)
    assert "resumed from" in resumed.stderr
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, killed)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4]
    for key in ("reward/mean", "agent/train_tokens", "agent/generated_tokens", "actor/grad_norm"):
        assert [r.get(key) for r in rows[0]] == [r.get(key) for r in rows[1]], key


def test_agent_rl_command(tiny_model_dir, tmp_path, capsys):
    from longrl.cli import main
    from longrl.data.readers import write_jsonl

    write_jsonl(make_samples(4), tmp_path / "train.jsonl")
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({
        "output_dir": str(tmp_path / "run"), "model": {"path": str(tiny_model_dir)},
        "data": {"sources": [{"path": str(tmp_path / "train.jsonl"), "format": "jsonl"}]},
        "reward": {"require_think": False}, "logging": {"progress": False, "tensorboard": False}}))
    overrides = [b for b in BASE if not b.startswith("rl.optim")] + ["rl.steps=1"]
    assert main(["agent-rl", "--config", str(config), *overrides]) == 0
    out = capsys.readouterr().out
    assert "agent RL done: 1 steps" in out and "turns 4.0" in out
    assert (tmp_path / "run" / "agent_rl" / "final").is_dir()
    assert main(["agent-rl", "--config", str(config), *overrides, "agent.memory_template=no slots"]) == 2
    assert "config key 'agent.memory_template' given on the command line" in capsys.readouterr().err
