"""FSDP2 on 2 CPU processes (gloo) through `accelerate launch --config_file configs/accelerate/fsdp_2proc_cpu.yaml`.

The tiny RL job (HF rollouts from the gathered replica, shared-prompt group forward, an old-policy pass and
2 updates per step, 3 prompts over 2 processes so the shares are uneven, a checkpoint every step) must give the weights of one
unsharded process for the same global batch, and a sharded run killed with kill -9 after a checkpoint must
resume to the weights of the uninterrupted sharded run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from _tiny_rl_job import assert_same_steps, free_port, run_metrics
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("_tiny_rl_job.py")
CONFIG = ROOT / "configs" / "accelerate" / "fsdp_2proc_cpu.yaml"
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
ARGS = ["rl.steps=4", "rl.prompts_per_step=3", "rl.epochs=2", "save_every=1", "keep_checkpoints=4"]
ATOL = 1e-5
"""Measured: the largest difference after 4 steps (8 AdamW updates at lr 0.01) is 1.1e-6 (summation order of
the gradient reduce-scatter and of the sharded gradient norm, amplified by Adam); the bound leaves room
for other CPUs' kernels."""



def _launch(model_dir, run_dir) -> list[str]:
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    assert Path(accelerate).exists(), "the accelerate CLI (a dependency of longrl) is missing"
    return [accelerate, "launch", "--config_file", str(CONFIG), "--main_process_port", str(free_port()),
            str(JOB), str(model_dir), str(run_dir), *ARGS]


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _failure(stderr: str) -> str:
    """The lines of a failed launch that say why (torchrun's summary alone names only the signal)."""
    lines = [x for x in stderr.splitlines() if "Error" in x or "error" in x or "abort" in x.lower()]
    return "\n".join(lines[-40:]) + "\n...\n" + stderr[-2000:]



def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """One unsharded process and one uninterrupted 2-process FSDP run of the same job."""
    root = tmp_path_factory.mktemp("fsdp")
    one, two = root / "one", root / "two"
    subprocess.run([sys.executable, str(JOB), str(tiny_model_dir), str(one), *ARGS], check=True, env=ENV,
                   capture_output=True, timeout=300)
    proc = subprocess.run(_launch(tiny_model_dir, two), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, _failure(proc.stderr)
    assert "FSDP2: Qwen2ForCausalLM sharded over 2 processes" in proc.stderr, proc.stderr[-4000:]
    # the shared-prefix attention dispatcher saw the sharded model's config and stayed on
    assert "shared-prompt path unavailable" not in proc.stderr
    return one, two


def test_fsdp_two_processes_match_one(runs):
    one, two = runs
    updates = assert_same_steps(one, two)
    assert updates >= 2, "fewer than 2 steps made an update: the comparison would be nearly vacuous"
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    moved = max(float((a[k] - load_file(str(one / "checkpoints" / "step-00000001" / "model" / "model.safetensors"))[k])
                      .abs().max()) for k in a)
    assert moved > 1e-3, "training did not move the weights: the comparison would be vacuous"
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=ATOL, rtol=0)
    # the checkpoints are whole (gathered): both processes' RNG, a Hugging Face model, the optimizer by name
    ckpt = two / "checkpoints" / "step-00000004"
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file()
    optim = torch.load(ckpt / "optimizer.pt", weights_only=False)
    assert set(optim["state"]) <= set(a) | {"lm_head.weight"} and optim["state"]
    full = load_file(str(ckpt / "model" / "model.safetensors"))
    for k in a:
        assert torch.equal(full[k], b[k]), k


def test_fsdp_kill_9_and_resume_gives_identical_weights(runs, tiny_model_dir, tmp_path):
    _, straight = runs
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_launch(tiny_model_dir, killed), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = killed / "checkpoints" / "step-00000002" / "manifest.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = psutil.Process(proc.pid).children(recursive=True)  # torchrun starts each in a session of its own
    assert sum(1 for w in workers if any("_tiny_rl_job" in a for a in _cmdline(w))) == 2, "not 2 training processes"
    for p in [proc, *workers]:
        try:
            os.kill(p.pid, signal.SIGKILL)  # the launcher and both training processes, as a node failure would
        except ProcessLookupError:
            pass
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the job finished before it could be killed"
    psutil.wait_procs(workers, timeout=30)
    assert not (killed / "final").exists()
    done = sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert done and done[-1] < "step-00000004"

    resumed = subprocess.run(_launch(tiny_model_dir, killed), env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, _failure(resumed.stderr)
    assert "resumed from step" in resumed.stderr
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [run_metrics(d) for d in (straight, killed)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4]
    assert [r["reward/mean"] for r in rows[0]] == [r["reward/mean"] for r in rows[1]]


def test_fsdp_checkpoint_resumes_on_one_unsharded_process(runs, tiny_model_dir, tmp_path):
    """A sharded run's step-2 checkpoint (gathered weights, optimizer keyed by name) resumes without FSDP
    and ends where the unsharded run ends."""
    one, two = runs
    run = tmp_path / "run"
    shutil.copytree(two, run)
    for name in ("final", "checkpoints/step-00000003", "checkpoints/step-00000004"):
        shutil.rmtree(run / name)
    proc = subprocess.run([sys.executable, str(JOB), str(tiny_model_dir), str(run), *ARGS], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, _failure(proc.stderr)
    assert "resumed from step 2" in proc.stderr
    a, b = _weights(one), _weights(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=ATOL, rtol=0)


SFT_ARGS = ["sft.steps=4", "sft.batch_size=5", "sft.micro_token_budget=200", "sft.eval_every=2", "save_every=2",
            "sft.optim.warmup_steps=0", "logging.progress=false", "logging.tensorboard=false"]
"""5 examples over 2 processes, packed into 200-token micro-batches: uneven numbers of passes per process
(the shorter share is padded), and a held-out evaluation every 2 steps."""


@pytest.mark.slow  # about 25 s: two more launches; the RL checks above cover the shared machinery
def test_fsdp_sft_cli_matches_one_process(tiny_model_dir, tmp_path):
    """`accelerate launch --config_file fsdp_2proc_cpu.yaml -m longrl.cli sft` (the documented way to pick
    FSDP) trains like `longrl sft` on one process."""
    data = tmp_path / "train.jsonl"
    subprocess.run([sys.executable, "-m", "longrl.cli", "synth", "--n", "12", "--tokens", "30", "--out", str(data)],
                   check=True, env=ENV, capture_output=True, timeout=120)
    common = ["sft", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), f"model.path={tiny_model_dir}",
              f"data.sources=[{{path: {data}, format: synthetic}}]", *SFT_ARGS]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "longrl.cli", *common, f"output_dir={one}"], check=True, env=ENV,
                   capture_output=True, timeout=300)
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    proc = subprocess.run([accelerate, "launch", "--config_file", str(CONFIG), "--main_process_port", str(free_port()),
                           "-m", "longrl.cli", *common, f"output_dir={two}"], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, _failure(proc.stderr)
    optim = torch.load(two / "sft" / "checkpoints" / "step-00000004" / "optimizer.pt", weights_only=False)
    assert all(isinstance(k, str) for k in optim["state"]), "the run was not sharded (optimizer keyed by position)"
    rows = [run_metrics(d / "sft") for d in (one, two)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4]
    for m1, m2 in zip(*rows, strict=True):
        assert m1["sft/loss"] == pytest.approx(m2["sft/loss"], rel=1e-5)
        assert ("sft/heldout_loss" in m1) == ("sft/heldout_loss" in m2)
        if "sft/heldout_loss" in m1:
            assert m1["sft/heldout_loss"] == pytest.approx(m2["sft/heldout_loss"], rel=1e-5)
    a = load_file(str(one / "sft" / "final" / "model.safetensors"))
    b = load_file(str(two / "sft" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=ATOL, rtol=0)
