"""Training telemetry: a rich progress bar, metrics JSONL, TensorBoard, optional W&B, rollout samples.

Metric keys are namespaced (``reward/mean``, ``actor/entropy``, ``loss/clip_frac``,
``response_length/mean``, ``sampling/filtered_groups``, ``judge/*``, ``perf/*``). Only the main process
writes. On resume, records past the resumed step are dropped from the JSONL files and from the
TensorBoard event files (rewritten without them), so a killed and resumed run leaves the same
records as an uninterrupted one.

``metrics.jsonl`` and ``rollout_samples.jsonl`` are strict JSON: a non-finite value (NaN, inf; e.g.
``reward/acc`` of a step with no rollout, or ``sft/heldout_loss`` before the first evaluation) is
written as ``null``. TensorBoard gets only finite values.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

PROGRESS_FIELDS = (("reward", "reward/mean"), ("acc", "reward/acc"), ("ent", "actor/entropy"),
                   ("tok/s", "perf/tokens_per_s"))
"""(label, metric key) pairs shown on the progress bar."""


def _truncate_jsonl(path: Path, after_step: int) -> None:
    """Keep only records whose ``step`` is <= ``after_step``."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(k + "\n" for k in kept))


def _truncate_tensorboard(tb_dir: Path, after_step: int) -> None:
    """Rewrite the event files under ``tb_dir`` keeping only events of steps <= ``after_step``.

    The kept events go to one new file (written completely before the old ones are removed), named with
    a timestamp one second before the oldest file's, so readers (which take files in name order) read it
    before the resumed run's file, which adds the later steps exactly once.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    files = sorted(tb_dir.glob("events.out.tfevents.*")) if tb_dir.is_dir() else []
    if not files:
        return
    events = [Event.FromString(raw) for f in files for raw in RawEventFileLoader(str(f)).Load()]
    events = [ev for ev in events
              if ev.step <= after_step and not ev.HasField("file_version") and not ev.HasField("session_log")]
    tmp = tb_dir / ".truncate"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = EventFileWriter(str(tmp))
    for ev in events:
        writer.add_event(ev)
    writer.close()
    first = files[0].name.split(".")[3]
    stamp = max(0, int(first) - 1) if first.isdigit() else 0
    (written,) = tmp.iterdir()
    written.replace(tb_dir / f"events.out.tfevents.{stamp:010d}.resumed-at-step-{after_step}")
    tmp.rmdir()
    for f in files:
        f.unlink()


def _clean(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool | int | float):
            out[k] = float(v)
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts and lists too) replaced by None (JSON null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class Telemetry:
    """Sinks for one training stage; a no-op on non-main processes (``enabled=False``)."""

    def __init__(self, run_dir: str | Path, *, total_steps: int, start_step: int = 0, description: str = "train",
                 jsonl: bool = True, tensorboard: bool = True, wandb_project: str = "", progress: bool = True,
                 enabled: bool = True, config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.total_steps = total_steps
        self._t0 = time.monotonic()
        self._tb = self._wandb = self._progress = None
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "rollout_samples.jsonl"
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = jsonl
        for p in (self.metrics_path, self.samples_path):
            _truncate_jsonl(p, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            _truncate_tensorboard(self.run_dir / "tb", start_step)
            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        if wandb_project and importlib.util.find_spec("wandb") is not None:
            import wandb

            self._wandb = wandb.init(project=wandb_project, dir=str(self.run_dir), config=config or {},
                                     name=self.run_dir.name, resume="allow")
        if progress:
            self._start_progress(description, start_step)

    def _start_progress(self, description: str, start_step: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
        self._progress.start()
        self._task = self._progress.add_task(description, total=self.total_steps, completed=start_step, info="")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` for 1-based ``step`` in every sink and advance the progress bar."""
        if not self.enabled:
            return
        values = _clean(metrics)
        if self._jsonl:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps({"step": step, **json_safe(values)}, allow_nan=False) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)
        if self._progress is not None:
            info = "  ".join(f"{label} {values[key]:.3g}" for label, key in PROGRESS_FIELDS if key in values)
            self._progress.update(self._task, completed=step, info=info)

    def write_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        """Append rollout samples (prompt id, response, extracted answer, reward, ...) for ``step``."""
        if not self.enabled or not records:
            return
        with self.samples_path.open("a") as f:
            for r in records:
                f.write(json.dumps(json_safe({"step": step, **r}), default=str, allow_nan=False) + "\n")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._progress = self._tb = self._wandb = None
