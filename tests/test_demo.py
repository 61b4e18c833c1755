"""`longrl demo`: the quick demo end to end (report, table, plots), resume without retraining, and the
embedded config matching configs/demo_cpu.yaml. The full demo is marked slow."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from longrl.cli import main
from longrl.demo import DEMO_CPU_YAML, DEMO_SMOLLM2_YAML

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, (path, img.shape)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    t0 = time.perf_counter()
    rc = main(["demo", "--quick", "--out", str(out), "--threads", "1", "logging.progress=false"])
    return out, rc, time.perf_counter() - t0


def test_quick_demo_end_to_end(quick_demo, capsys):
    out, rc, wall = quick_demo
    assert rc == 0
    assert wall < 90, f"quick demo took {wall:.0f}s"
    report = out / "report"
    summary = (report / "summary.md").read_text()
    assert "| documents | family | init | sft | phase1 | phase2 |" in summary
    assert "64 tokens" in summary and "160 tokens" in summary
    for stem in ("reward", "accuracy", "entropy", "response_length", "filtered_groups", "heldout_accuracy"):
        assert_png(report / "plots" / f"{stem}.png")
    cfg = yaml.safe_load((report / "config.yaml").read_text())
    assert cfg["output_dir"] == str(out) and cfg["pipeline"]["tiny"]["hidden_size"] == 32
    samples = [json.loads(x) for x in (report / "rollout_samples.jsonl").read_text().splitlines()]
    assert samples and {s["phase"] for s in samples} == {"phase1", "phase2"}
    assert {"response", "reward", "acc", "step"} <= set(samples[0])


def test_rerun_resumes_without_retraining(quick_demo, capsys):
    out, _, _ = quick_demo
    capsys.readouterr()
    finals = {p: p.stat().st_mtime_ns for p in out.glob("stages/*/final/model.safetensors")}
    assert len(finals) == 4
    assert main(["demo", "--quick", "--out", str(out), "--threads", "1", "logging.progress=false"]) == 0
    printed = capsys.readouterr().out
    for stage in ("init", "sft", "phase1", "phase2"):
        assert f"[{stage}] complete; skipped" in printed
    assert "| documents | family | init | sft | phase1 | phase2 |" in printed
    assert "RL (phase1 -> phase2) moved held-out accuracy" in printed
    assert {p: p.stat().st_mtime_ns for p in finals} == finals


def test_embedded_configs_match_the_files():
    assert (REPO / "configs" / "demo_cpu.yaml").read_text() == DEMO_CPU_YAML
    assert (REPO / "configs" / "demo_smollm2.yaml").read_text() == DEMO_SMOLLM2_YAML


def test_configs_load():
    from longrl.config import load_config

    for name in ("demo_cpu.yaml", "demo_smollm2.yaml", "qwenlong_l1_32b.yaml", "r1_distill_1.5b_1gpu_vllm.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert len(cfg.curriculum.phases) >= 2, name


@pytest.mark.slow
def test_full_demo_meets_the_bar(tmp_path):
    """The bar (issue 8), on the documented command: at most 15 minutes, RL raises held-out accuracy over
    SFT by >= 10 points on >= 200 questions, and the long phase raises long-document accuracy over the
    short-phase checkpoint. Not met by the current recipe (docs/demo.md): this test fails until it is."""
    from longrl.pipeline import read_manifest

    out = tmp_path / "demo"
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(out), "--threads", "1"]) == 0
    assert time.perf_counter() - t0 <= 15 * 60
    stages = {n: read_manifest(out / "stages" / n)["eval"] for n in ("sft", "phase1", "phase2")}
    assert stages["sft"]["n"] >= 200
    assert stages["phase2"]["acc"] - stages["sft"]["acc"] >= 0.10
    longest = max(stages["phase2"]["sets"], key=int)
    assert stages["phase2"]["sets"][longest]["acc"] > stages["phase1"]["sets"][longest]["acc"]
