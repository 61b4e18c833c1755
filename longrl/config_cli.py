"""`longrl config show|check FILE [key=value ...]`."""

from __future__ import annotations

import argparse

from longrl.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show", "check"], help="show: print the resolved config; check: validate only")
    p.add_argument("file", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, args.overrides)
    if args.action == "show":
        print(cfg.to_yaml(), end="")
    else:
        print(f"{args.file}: ok (hash {cfg.hash()})")
    return 0
