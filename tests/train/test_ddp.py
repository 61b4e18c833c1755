"""Two processes (DDP over gloo, ``torchrun --nproc_per_node 2``) match one process for the same global batch.

``accelerate launch --cpu --num_processes 2`` on a machine without GPUs starts ONE process (world size 1),
so the test launches with torchrun and checks that two ranks really ran."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from _tiny_rl_job import assert_same_steps, free_port
from safetensors.torch import load_file

JOB = Path(__file__).with_name("_tiny_rl_job.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
ARGS = ["rl.steps=3", "rl.prompts_per_step=3", "rl.mini_batches=1", "save_every=0"]


def test_two_processes_match_one(tiny_model_dir, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    assert Path(torchrun).exists(), "the torchrun CLI (part of torch) is missing"
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, str(JOB), str(tiny_model_dir), str(one), *ARGS], check=True, env=ENV,
                   capture_output=True, timeout=300)
    launch = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    proc = subprocess.run([*launch, str(JOB), str(tiny_model_dir), str(two), *ARGS], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the two ranks share one stdout pipe, so their lines may arrive glued together: find the messages, not lines
    done = sorted(re.findall(r"job done: rank (\d+) of world_size=(\d+)", proc.stdout))
    assert done == [("0", "2"), ("1", "2")], proc.stdout[-2000:]
    # 3 prompts over 2 processes: uneven shards (2 + 1) and uneven micro-batch counts
    updates = assert_same_steps(one, two)
    assert updates >= 1, "no step made an update: the comparison would be vacuous"
    a = load_file(str(one / "final" / "model.safetensors"))
    b = load_file(str(two / "final" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=0)
