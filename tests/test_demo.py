"""`longrl demo`: the quick demo end to end (report, table, plots), resume without retraining, and the
recipes it reads. The full demo is marked slow."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from longrl.cli import main
from longrl.config import ConfigError
from longrl.demo import recipe

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
    assert f"with 1 torch thread(s) on a {os.cpu_count()}-core machine" in summary
    assert "`--quick` checks that every stage runs, not that the model learns" in summary
    for stem in ("reward", "accuracy", "entropy", "response_length", "filtered_groups", "heldout_accuracy",
                 "behaviours"):
        assert_png(report / "plots" / f"{stem}.png")
    assert "### Retrospective pool of phase2" in summary and "| difficulty | candidates | pool | served" in summary
    end = json.loads((out / "stages" / "phase2" / "manifest.json").read_text())["curriculum"]["end"]
    assert sum(end["curriculum/retro_served_hist"]) == end["curriculum/retro_samples"] > 0
    assert "## Held-out accuracy (%) by where the evidence lies" in summary
    assert "| documents | evidence in | questions | init | sft | phase1 | phase2 |" in summary
    assert "| 160 tokens | " in summary.split("by where the evidence lies", 1)[1]
    assert "## Reasoning behaviours" in summary and "![behaviours over RL steps](plots/behaviours.png)" in summary
    per_stage = json.loads((report / "behaviours.json").read_text())["per_stage"]
    assert [r["stage"] for r in per_stage] == ["init", "sft", "phase1", "phase2"]
    assert all(r["n"] == 16 and r["no_verdict"] == 0 for r in per_stage)     # 2 sets x 8 held-out questions
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
    assert "`--quick` checks that every stage runs, not that the model learns" in printed
    assert {p: p.stat().st_mtime_ns for p in finals} == finals


def test_demo_recipes_are_package_data_and_configs_link_to_them():
    for name in ("demo_cpu", "demo_smollm2"):
        source, data = recipe(name)
        assert source == f"longrl/recipes/{name}.yaml" and data["curriculum"]["phases"]
        assert (REPO / "configs" / f"{name}.yaml").resolve() == (REPO / source).resolve()


def test_configs_load():
    from longrl.config import load_config

    for name in ("demo_cpu.yaml", "demo_smollm2.yaml", "qwenlong_l1_32b.yaml", "r1_distill_1.5b_1gpu_vllm.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert len(cfg.curriculum.phases) >= 2, name


def test_depth_table_bins_single_evidence_questions_by_position(tmp_path):
    """Accuracy by evidence position: each single-evidence question in its third of the document, each
    stage's predictions joined on (set, id); multi-evidence questions and other sets' ids do not count."""
    from longrl.config import build_config
    from longrl.data.readers import write_jsonl
    from longrl.data.synth import generate
    from longrl.pipeline import depth_table

    cfg = build_config({"output_dir": str(tmp_path), "curriculum": {"phases": [
        {"name": "phase1", "max_input_tokens": 400}, {"name": "phase2", "max_input_tokens": 800}]}})
    samples = generate(5, 200, families=["lookup"], split="heldout")
    for s, d in zip(samples, ([0.1], [0.2], [0.5], [0.95], [0.1, 0.9])):
        s.metadata["evidence_depth"] = d
    write_jsonl(samples, tmp_path / "data" / "heldout_200.jsonl")
    acc = {"sft": [1, 0, 0, 1, 1], "phase1": [1, 1, 1, 0, 1]}
    for stage, accs in acc.items():
        rows = [{"set": "200", "id": s.id, "acc": a} for s, a in zip(samples, accs)]
        rows.append({"set": "999", "id": samples[2].id, "acc": 1.0})           # another set's question
        d = tmp_path / "stages" / stage
        d.mkdir(parents=True)
        (d / "heldout_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = depth_table(cfg).splitlines()
    assert lines[0] == "| documents | evidence in | questions | sft | phase1 |"
    assert lines[2:] == ["| 200 tokens | first third | 2 | 50.0 | 100.0 |",
                         "| 200 tokens | middle third | 1 | 0.0 | 100.0 |",
                         "| 200 tokens | last third | 1 | 100.0 | 0.0 |"]
    (tmp_path / "stages" / "sft" / "heldout_predictions.jsonl").unlink()
    (tmp_path / "stages" / "phase1" / "heldout_predictions.jsonl").unlink()
    assert depth_table(cfg) == ""


@pytest.mark.slow
def test_full_demo_meets_the_bar(tmp_path):
    """The bar on the documented command: at most 15 minutes, RL raises held-out accuracy over SFT by
    >= 10 points on >= 200 questions, and the long phase raises long-document accuracy over the
    short-phase checkpoint (measured figures: docs/demo.md)."""
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


def test_seeds_runs_one_demo_per_seed_and_tables_them(tmp_path, capsys):
    out = tmp_path / "seeds"
    assert main(["demo", "--quick", "--seeds", "3,4", "--out", str(out), "--threads", "1",
                 "logging.progress=false"]) == 0
    table = (out / "seeds.md").read_text()
    assert table in capsys.readouterr().out
    for seed in (3, 4):
        summary = json.loads((out / f"seed{seed}" / "report" / "summary.json").read_text())
        assert summary["seed"] == seed and summary["stages_skipped"] == []
        row = next(line for line in table.splitlines() if line.startswith(f"| {seed} |"))
        acc = summary["verdict"]["stages"]
        assert row.split(" | ")[1:4] == [f"{100 * acc[s]:.1f}" for s in ("sft", "phase1", "phase2")]
    assert "| mean ± sd |" in table and "Chance level: mcq 25%" in table
    # the data of different seeds differ: the demo really ran per seed
    assert (out / "seed3" / "data" / "rl.jsonl").read_text() != (out / "seed4" / "data" / "rl.jsonl").read_text()


def _summary(seed, sft, p1, p2, long_before, long_after, minutes):
    return {"seed": seed, "wall_s": 60 * minutes, "threads": 1, "stages_skipped": [],
            "verdict": {"start": "sft", "phases": ["phase1", "phase2"], "base": sft, "final": p2, "n": 512,
                        "stages": {"sft": sft, "phase1": p1, "phase2": p2}, "longest": "256",
                        "long_before": long_before, "long_after": long_after,
                        "families": {"mcq": 0.3, "numeric": 0.0}}}


def test_seed_table_checks_each_part_of_the_bar():
    from longrl.demo_seeds import parse_seeds, seeds_markdown

    text = seeds_markdown([_summary(0, 0.20, 0.35, 0.50, 0.2, 0.5, 14.0),   # holds
                           _summary(1, 0.20, 0.25, 0.29, 0.2, 0.3, 14.0),   # +9 points: misses the gain
                           _summary(2, 0.20, 0.40, 0.45, 0.5, 0.4, 16.0)])  # long docs fell, and too slow
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert rows["0"].endswith("| held |")
    assert rows["1"].endswith("| missed: gain |")
    assert rows["2"].endswith("| missed: long docs, time |")
    assert "| +30.0 |" in rows["0"] and "20.0 -> 50.0 (+30.0)" in rows["0"]
    assert rows["mean ± sd"].endswith("| 1 of 3 |")
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("0,x")
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("1,1")

def test_seeds_and_seed_together_is_an_error(capsys):
    assert main(["demo", "--seeds", "0,1", "--seed", "3", "--quick"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_family_step_breakdown_locates_the_failing_step(tmp_path, capsys):
    from bench.demo_families import main as families

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "stages" / "sft").mkdir(parents=True)
    doc = {"source": "synthetic", "document": "Kalor lives in Maple. Kalor has 17 coins. Tisen has 23 coins."}
    mcq = {"id": "m1", "task": "mcq", "question": "Where does Kalor live?", "answers": ["B"], **doc,
           "metadata": {"family": "mcq", "evidence": ["Kalor lives in Maple."],
                        "options": ["Amber", "Maple", "Cedar", "Dover"]}}
    num = {"id": "n1", "task": "numeric", "question": "How many coins?", "answers": ["40"], **doc,
           "metadata": {"family": "numeric", "evidence": ["Kalor has 17 coins.", "Tisen has 23 coins."]}}
    (run / "data" / "heldout_64.jsonl").write_text(json.dumps(mcq) + "\n" + json.dumps(num) + "\n")
    preds = [  # the right value with the wrong letter; then a right chain with the wrong sum
        {"id": "m1", "family": "mcq", "acc": 0.0,
         "response": "<think>Kalor lives in Maple. Option A is Maple. Therefore, the answer is A.</think>"},
        {"id": "n1", "family": "numeric", "acc": 0.0,
         "response": "<think>Kalor has 17 coins. Tisen has 23 coins. 17 + 23 = 31.</think>"},
    ]
    (run / "stages" / "sft" / "heldout_predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    assert families([str(run), "--stages", "sft"]) == 0
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1].rstrip(" |") for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["mcq: V is the right value (of those lines)"] == "100% (1/1)"
    assert rows["mcq: X is V's letter (of lines whose V is an option; chance 25%)"] == "0% (0/1)"
    assert rows["numeric: wrote both operand facts"] == "100% (1/1)"
    assert rows["numeric: v = a op b for its own a, b (of those lines)"] == "0% (0/1)"


def test_mcq_chain_probe_runs_on_a_demo_run(quick_demo, tmp_path, capsys):
    from bench.mcq_chain_probe import chain
    from bench.mcq_chain_probe import main as mcq_probe

    opts = ["Amber", "Maple", "Cedar", "Dover"]
    assert chain("base", "K lives in Maple.", opts, "B") == ["K lives in Maple.", "Option B is Maple."]
    assert chain("enum", "K lives in Maple.", opts, "B") == ["K lives in Maple.", "Option A is Amber.",
                                                             "Option B is Maple."]
    assert chain("enumall", "f.", opts, "C")[-1] == "Cedar is option C."
    out, _, _ = quick_demo
    assert mcq_probe([str(out), "--variants", "enum", "--steps", "2", "--out", str(tmp_path / "probe")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| enum | 2 |")]
    assert [r.split(" | ")[2] for r in rows] == ["160 tokens", "64 tokens"]
    assert all(0.0 <= float(r.split(" | ")[3].rstrip("% |")) <= 100.0 for r in rows)
    trained = json.loads((tmp_path / "probe" / "enum-2" / "final" / "config.json").read_text())
    assert trained["model_type"] == "qwen2"
