"""The seven DocQA benchmarks as adapters: where the data lives, how it is read, how a response scores.

Every adapter shares the QwenLong prompt (``longrl.data.prompt.render_user_prompt``); they differ in
the reader, the answer extraction and the metrics. The LongBench tasks and FRAMES report EM, sub-EM
and F1 and use sub-EM as the rule metric; DocMath reports accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from longrl.data.readers import read_source
from longrl.data.records import DocQASample
from longrl.eval import metrics as M


@dataclass(frozen=True)
class Scored:
    pred: str | None
    """The extracted answer (None when the response states none)."""
    metrics: dict[str, float]
    """Every metric of the benchmark, each in [0, 1]."""
    rule: float
    """The rule metric that enters max(rule, judge): sub_em or acc."""
    reason: str = ""
    """Why the rule scorer gave what it gave, where the scorer says (the held-out sets' rule reward)."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    """Registry name, also the DocQASample.source of its samples."""
    title: str
    """Column header in the paper's table."""
    format: str
    """``longrl.data.readers`` format name."""
    file_stems: tuple[str, ...]
    """File (or directory) stems searched in the data directory, in order."""
    metric_names: tuple[str, ...]
    """Keys of ``Scored.metrics``."""
    rule_metric: str
    """The metric combined with the judge verdict."""
    extract: Callable[[str], str | None]
    """Response -> extracted answer."""
    metric_fn: Callable[[str | None, list[str], bool], dict[str, float]]
    """(pred, gold answers, first_gold_only) -> {metric name: value}."""
    judge_final_text: bool = False
    """Without an extracted answer, judge the final text instead (QwenLong-L1's docmath_verify.py)."""

    def score(self, response: str, answers: list[str], *, first_gold_only: bool = False,
              sample: DocQASample | None = None) -> Scored:
        """Extract the answer from a full response and compute every metric (``sample``: the scored sample,
        for adapters that need more of it than its answers)."""
        pred = self.extract(response)
        values = self.metric_fn(pred, answers, first_gold_only)
        return Scored(pred=pred, metrics=values, rule=values[self.rule_metric])

    def find_data(self, data_dir: str | Path) -> Path:
        """The benchmark's file or directory under ``data_dir`` (first matching stem)."""
        root = Path(data_dir)
        for stem in self.file_stems:
            for cand in (root / stem, root / f"{stem}.jsonl", root / f"{stem}.json"):
                if cand.exists():
                    return cand
        tried = ", ".join(f"{s}[.jsonl|.json|/]" for s in self.file_stems)
        raise FileNotFoundError(f"benchmark {self.name!r}: none of {tried} in {root}")

    def load(self, data_dir: str | Path, limit: int = 0) -> list[DocQASample]:
        """Read the benchmark's samples (the first ``limit`` when > 0), tagged with its name as source."""
        samples = read_source(self.find_data(data_dir), format=self.format, name=self.name)
        return samples[:limit] if limit > 0 else samples


def _qa(name: str, title: str, fmt: str, stems: tuple[str, ...]) -> Benchmark:
    return Benchmark(name=name, title=title, format=fmt, file_stems=stems,
                     metric_names=("em", "sub_em", "f1"), rule_metric="sub_em", extract=M.extract_qa_answer,
                     metric_fn=M.qa_metrics)


def _longbench(name: str, title: str) -> Benchmark:
    return _qa(name, title, "longbench", (name, f"longbench_{name}", f"longbench/{name}"))


BENCHMARKS: dict[str, Benchmark] = {}
"""Registry, in the column order of the paper's Table 4."""


def register(bench: Benchmark) -> Benchmark:
    if bench.name in BENCHMARKS:
        raise ValueError(f"benchmark {bench.name!r} registered twice")
    BENCHMARKS[bench.name] = bench
    return bench


register(Benchmark(name="docmath", title="DocMath", format="docmath",
                   file_stems=("docmath", "docmath_testmini", "docmath_test"),
                   metric_names=("acc",), rule_metric="acc", extract=M.extract_docmath_answer,
                   metric_fn=M.docmath_metrics, judge_final_text=True))
register(_qa("frames", "Frames", "frames", ("frames", "frames_test", "frames_50")))
register(_longbench("2wikimqa", "2Wiki"))
register(_longbench("hotpotqa", "HQA"))
register(_longbench("musique", "Musi"))
register(_longbench("narrativeqa", "NarQA"))
register(_longbench("qasper", "Qasp"))


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
