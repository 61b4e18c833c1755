"""Exact resume: 6 uninterrupted steps == steps until a real `kill -9` + a resumed run to step 6."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

JOB = Path(__file__).with_name("_tiny_rl_job.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _cmd(model_dir, run_dir) -> list[str]:
    return [sys.executable, str(JOB), str(model_dir), str(run_dir), "rl.steps=6", "rl.mini_batches=2",
            "rl.prompts_per_step=2"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_kill_9_and_resume_gives_identical_weights(tiny_model_dir, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_cmd(tiny_model_dir, straight), check=True, env=ENV, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(tiny_model_dir, killed), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = killed / "checkpoints" / "step-00000003" / "manifest.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the job finished before it could be killed"
    assert not (killed / "final").exists()
    done = sorted(p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert done and done[-1] < "step-00000006"

    resumed = subprocess.run(_cmd(tiny_model_dir, killed), check=True, env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert "resumed from" in resumed.stderr
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    import json

    rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, killed)]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4, 5, 6]  # records past the checkpoint were rewritten
    assert [r["reward/mean"] for r in rows[0]] == [r["reward/mean"] for r in rows[1]]
