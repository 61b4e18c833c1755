"""``longrl demo``: the whole QwenLong-L1 recipe on a CPU, end to end, with a report.

A tokenizer trained on synthetic DocQA texts and a small Qwen2 model built from scratch (or ``--model
PATH``, a Hugging Face directory or a .gguf file) go through warm-up SFT and two curriculum RL phases
of increasing document length (DAPO loss, dynamic sampling, overlong shaping, retrospective sampling),
and are evaluated on held-out questions at every phase's document length after every stage. The run
is the pipeline of :mod:`longrl.pipeline` on the embedded config below (``configs/demo_cpu.yaml`` is
the same file), so Ctrl-C leaves a resumable run and re-running the command resumes it.

The report folder (``<out>/report``) holds ``summary.md`` (the table, wall times, the curriculum
transition), ``plots/*.png`` (reward, accuracy, entropy, response length and filtered-group
fraction per RL step with the phase boundaries marked, held-out accuracy per stage, and the four
reasoning behaviours per RL step next to accuracy), ``behaviours.md`` (behaviour counts per stage),
``config.yaml`` and ``rollout_samples.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

DEMO_CPU_YAML = """\
# The `longrl demo` recipe: a from-scratch tiny policy on synthetic long-context DocQA, on 2 CPU cores.
# Embedded in longrl/demo.py (DEMO_CPU_YAML); `longrl pipeline configs/demo_cpu.yaml` runs the same thing.
seed: 0
output_dir: runs/demo
save_every: 10
keep_checkpoints: 1
model:
  path: ""                  # empty: tokenizer + Qwen2 model built from scratch (pipeline.tiny)
  dtype: float32
  device: cpu
pipeline:
  threads: 2
  eval_batch_size: 32
  tiny: {vocab_size: 1200, hidden_size: 128, num_layers: 2, num_heads: 4, num_kv_heads: 2,
         corpus_samples: 400, corpus_tokens: 256,
         copy_pretrain: {steps: 800, batch_size: 16, lr: 1.0e-3},    # induction (copy) circuit
         recall_pretrain: {steps: 400, batch_size: 16, lr: 1.0e-3, target_tokens: 64, documents: 4000}}  # fact lookup
  synthetic:
    enabled: true
    families: [lookup, multihop, numeric, mcq]
    sft: [{target_tokens: 64, n: 12000}]                        # warm-up SFT on short documents
    train: [{target_tokens: 128, n: 2400}, {target_tokens: 256, n: 1600}]   # fresh prompts: RL draws ~1900 + ~1200
    heldout: [{target_tokens: 128, n: 256}, {target_tokens: 256, n: 256}]
sft:
  steps: 400
  batch_size: 16
  heldout_fraction: 0.0
  eval_every: 0
  prompt_loss_weight: 0.5     # + next-token loss on the documents: a dense signal for a model from scratch
  optim: {lr: 1.0e-3, weight_decay: 0.0, warmup_steps: 20, schedule: cosine}   # 3e-3: 15.2% after SFT, not 22.7% (docs/demo.md)
rollout:
  group_size: 8
  temperature: 1.0
  top_p: 1.0
  max_new_tokens: 64          # gold reasoning + answer: at most 53 tokens
reward:
  overlong: {enabled: true, buffer_tokens: 8, penalty_factor: 1.0}
algo:
  advantage: grpo
  clip_low: 0.2
  clip_high: 0.28             # DAPO clip-higher
  loss_agg: token-mean        # DAPO token-level loss
  kl_coef: 0.0
rl:
  prompts_per_step: 16
  micro_token_budget: 16384
  optim: {lr: 1.0e-4, weight_decay: 0.0, warmup_steps: 0, schedule: constant, grad_clip: 1.0}
  dynamic_sampling: {enabled: true, metric: acc, max_rounds: 3, on_cap: proceed}
curriculum:
  phases:
    - {name: phase1, max_input_tokens: 240, steps: 120}       # ~128-token documents
    - {name: phase2, max_input_tokens: 480, steps: 100}       # ~256-token documents
  retrospective: {enabled: true, hard_threshold: 0.5, fraction: 0.25, cap: 64}
eval:
  k: 1
  temperature: 0.7            # QwenLong-L1's evaluation sampling
  top_p: 0.95
  max_new_tokens: 64
  max_input_tokens: 4096
logging:
  tensorboard: false
  rollout_samples_every: 5
  rollout_samples: 4
"""

DEMO_SMOLLM2_YAML = """\
# `longrl demo --model .../SmolLM2-135M-Instruct.Q4_1.gguf`: the same recipe sized for a 135M pretrained model
# (dequantised from GGUF to float32 on load). Token lengths are in SmolLM2 tokens.
seed: 0
output_dir: runs/demo_smollm2
save_every: 5
keep_checkpoints: 1
model: {path: "", dtype: float32, device: cpu}
pipeline:
  threads: 2
  eval_batch_size: 16
  synthetic:
    enabled: true
    families: [lookup, multihop, numeric, mcq]
    sft: [{target_tokens: 192, n: 256}]
    train: [{target_tokens: 256, n: 128}, {target_tokens: 768, n: 64}]
    heldout: [{target_tokens: 256, n: 64}, {target_tokens: 768, n: 64}]
sft:
  steps: 32
  batch_size: 8
  heldout_fraction: 0.0
  eval_every: 0
  optim: {lr: 2.0e-5, weight_decay: 0.0, warmup_steps: 4, schedule: cosine}
rollout: {group_size: 4, temperature: 1.0, top_p: 1.0, max_new_tokens: 64}
reward:
  overlong: {enabled: true, buffer_tokens: 16, penalty_factor: 1.0}
algo: {advantage: grpo, clip_low: 0.2, clip_high: 0.28, loss_agg: token-mean, kl_coef: 0.0}
rl:
  prompts_per_step: 4
  optim: {lr: 2.0e-6, weight_decay: 0.0, schedule: constant, grad_clip: 1.0}
  dynamic_sampling: {enabled: true, metric: acc, max_rounds: 2, on_cap: proceed}
curriculum:
  phases:
    - {name: phase1, max_input_tokens: 450, steps: 8}
    - {name: phase2, max_input_tokens: 1100, steps: 6}
  retrospective: {enabled: true, hard_threshold: 0.5, fraction: 0.25, cap: 32}
eval: {k: 1, temperature: 0.7, top_p: 0.95, max_new_tokens: 64, max_input_tokens: 4096}
logging: {tensorboard: false, rollout_samples_every: 2, rollout_samples: 4}
"""

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory (report in OUT/report)")
    parser.add_argument("--model", default="", help="start from this model (HF directory or .gguf file) "
                                                     "instead of building one from scratch")
    parser.add_argument("--config", default="", help="YAML recipe (default: the embedded demo config, or the "
                                                     "SmolLM2 one for a .gguf --model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="toy sizes, about a minute (smoke test)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: the config's)")
    parser.add_argument("overrides", nargs="*", help="key.path=value config overrides")


def demo_config(args: argparse.Namespace):
    """The resolved :class:`~longrl.config.Config` for these arguments."""
    from longrl.config import _merge, _parse_override, config_from_dict

    if args.config:
        source = args.config
        data = yaml.safe_load(Path(args.config).read_text()) or {}
    elif args.model.endswith(".gguf"):
        source, data = "<embedded demo_smollm2>", yaml.safe_load(DEMO_SMOLLM2_YAML)
    else:
        source, data = "<embedded demo_cpu>", yaml.safe_load(DEMO_CPU_YAML)
    overrides = (QUICK_OVERRIDES if args.quick else []) + list(args.overrides)
    overrides += [f"seed={args.seed}", f"output_dir={args.out}"]
    if args.model:
        overrides.append(f"model.path={args.model}")
    if args.threads:
        overrides.append(f"pipeline.threads={args.threads}")
    for ov in overrides:
        data = _merge(data, _parse_override(ov))
    return config_from_dict(data, source)


def run(args: argparse.Namespace) -> int:
    import torch

    from longrl.pipeline import Pipeline, StageError, print_event

    cfg = demo_config(args)
    if cfg.pipeline.threads:
        torch.set_num_threads(cfg.pipeline.threads)
    t0 = time.perf_counter()
    pipe = Pipeline(cfg, on_event=print_event, progress=cfg.logging.progress)
    try:
        manifests = pipe.run()
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = write_report(cfg, manifests, time.perf_counter() - t0, command=" ".join(["longrl"] + sys.argv[1:]))
    print(report["table"])
    print(f"\n{report['verdict']}")
    print(f"report: {report['dir']}/summary.md")
    return 0


# ---------------------------------------------------------------------------- report
def stage_table(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(m["stage"], m["eval"]) for m in manifests if m.get("eval")]


def verdict(cfg, table: list[tuple[str, dict[str, Any]]]) -> str:
    """The demo's claims, checked against the table: RL over SFT, and the long phase on long documents."""
    from longrl.pipeline import ordered_sets, phase_names

    evals = dict(table)
    phases = [p for p in phase_names(cfg) if p in evals]
    start = "sft" if "sft" in evals else "init"
    if not phases or start not in evals:
        return "not enough stages evaluated for a verdict"
    base, final = evals[start], evals[phases[-1]]
    lines = [f"RL ({' -> '.join(phases)}) moved held-out accuracy from {100 * base['acc']:.1f}% ({start}) to "
             f"{100 * final['acc']:.1f}% ({final['n']} questions): {100 * (final['acc'] - base['acc']):+.1f} points."]
    if len(phases) >= 2:
        longest = ordered_sets(final)[-1]
        before = evals[phases[-2]]["sets"][longest]["acc"]
        after = final["sets"][longest]["acc"]
        lines.append(f"The last phase moved accuracy on {longest}-token documents from {100 * before:.1f}% "
                     f"({phases[-2]}) to {100 * after:.1f}% ({phases[-1]}): {100 * (after - before):+.1f} points.")
    return "\n".join(lines)


def collect_rollout_samples(cfg, out: Path) -> int:
    """Concatenate every phase's rollout samples (with the phase name) into ``out``; returns the count."""
    from longrl.pipeline import phase_names, stage_dir

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


def write_report(cfg, manifests: list[dict[str, Any]], wall_s: float, command: str) -> dict[str, Any]:
    """Write ``<output_dir>/report`` and return {'dir', 'table', 'verdict'}."""
    from longrl.analysis.plots import plot_accuracy_by_stage, plot_dynamics, read_metrics
    from longrl.pipeline import markdown_table, phase_names, stage_dir

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
    text = verdict(cfg, table)
    from longrl.analysis.behaviours import report_for_run, report_section

    behaviours = report_section(report_for_run(cfg, out, out / "plots" / "behaviours.png"), "plots/behaviours.png")
    (out / "summary.md").write_text(summary_markdown(cfg, manifests, table_md, text, wall_s, command, n_samples)
                                    + "\n" + behaviours)
    return {"dir": str(out), "table": table_md, "verdict": text}


def summary_markdown(cfg, manifests: list[dict[str, Any]], table_md: str, verdict_text: str, wall_s: float,
                     command: str, n_samples: int) -> str:
    init = next((m for m in manifests if m["stage"] == "init"), {})
    params = init.get("metrics", {}).get("model/parameters", 0)
    stage_s = sum(m.get("train_wall_s", 0.0) + m.get("eval_wall_s", 0.0) for m in manifests)
    lines = [
        "# longrl demo report", "",
        f"Command: `{command}`  ", f"Seed: {cfg.seed}; model: {init.get('output_model', '?')} "
        f"({params / 1e6:.2f}M parameters)  ",
        f"Wall time of this invocation: {wall_s:.0f}s; training + evaluation summed over stages: {stage_s:.0f}s",
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
    return "\n".join(lines)
