"""``longrl pipeline CONFIG [key=value ...]``: the stages of :mod:`longrl.pipeline` on the own trainer, or
with ``--engine verl`` each curriculum phase as a verl job (:mod:`longrl.engines.verl.run`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longrl.config import ConfigError, load_config
from longrl.engines.verl.run import run_verl_pipeline
from longrl.pipeline import STAGE_EVAL, Pipeline, StageError, print_event


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides (e.g. output_dir=runs/x)")
    parser.add_argument("--from-stage", default=None, help="discard this stage and the later ones, and run from it")
    parser.add_argument("--until-stage", default=None, help="stop after this stage")
    parser.add_argument("--engine", choices=("own", "verl"), default="own",
                        help="what runs each curriculum phase: longrl's trainer (own) or a verl job (verl)")
    parser.add_argument("--dry-run", action="store_true",
                        help="--engine verl: print every command and generated file, run nothing")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.pipeline.threads:
        import torch

        torch.set_num_threads(cfg.pipeline.threads)
    if args.engine == "verl" or args.dry_run:
        if args.engine != "verl":
            raise ConfigError("--dry-run", "only the verl engine has a dry run (add --engine verl)")
        return run_verl_pipeline(cfg, args.from_stage, args.until_stage, args.dry_run, on_event=print_event)
    pipe = Pipeline(cfg, on_event=print_event)
    try:
        pipe.run(args.from_stage, args.until_stage)
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = Path(cfg.output_dir) / "stages" / STAGE_EVAL / "table.md"
    if table.is_file():
        print(table.read_text())
    return 0
