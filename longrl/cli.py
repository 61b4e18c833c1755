"""The `longrl` command. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when needed."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("longrl.demo", "Train and evaluate a small long-context DocQA model on CPU, end to end."),
    "config": ("longrl.config_cli", "Show or check a config file."),
    "prepare": ("longrl.data.prepare", "Read sources, count tokens, bucket into phases, export."),
    "synth": ("longrl.data.synth", "Generate synthetic long-context DocQA data."),
    "judge": ("longrl.rewards.judge_cli", "Judge (question, prediction, gold) pairs with an LLM judge."),
    "sft": ("longrl.train.sft", "Warm-up supervised fine-tuning."),
    "rl": ("longrl.train.rl", "GRPO/DAPO reinforcement learning."),
    "agent-rl": ("longrl.train.agent_rl", "GRPO/DAPO RL of the memory agent (chunked reading, multi-turn)."),
    "pipeline": ("longrl.pipeline_cli", "SFT -> curriculum RL phases -> evaluation, resumable."),
    "eval": ("longrl.eval.cli", "Evaluate on DocQA benchmarks, or re-score saved predictions."),
    "distill": ("longrl.distill", "SFT data from a teacher by rejection sampling (k traces, keep the correct)."),
    "behaviours": ("longrl.analysis.behaviours_cli",
                   "Count grounding, subgoal, backtracking and verification in saved responses."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (all of them when None)."""
    parser = argparse.ArgumentParser(prog="longrl", description="Long-context reasoning RL (QwenLong-L1 recipe).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if command is None or name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # lazy, like the command modules: `longrl --help` stays instant
    from longrl.config import ConfigError
    from longrl.data.records import RecordError

    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        rc = int(importlib.import_module(args._module).run(args) or 0)
    except (ConfigError, RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run directory holds the last checkpoint; re-run the same command to resume",
              file=sys.stderr)
        return 130
    if "torch.distributed" in sys.modules:   # a multi-process launch: leave without the teardown abort
        from longrl.train.runtime import exit_distributed

        exit_distributed(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
