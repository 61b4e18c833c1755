"""Evaluation on the seven DocQA benchmarks: adapters, faithful metrics, a resumable harness, reports."""

from longrl.eval.benchmarks import BENCHMARKS, Benchmark, Scored, get_benchmark
from longrl.eval.metrics import avg_at_k, docmath_metrics, mean_pass_at_k, pass_at_k, qa_metrics

__all__ = ["BENCHMARKS", "Benchmark", "Scored", "get_benchmark", "avg_at_k", "docmath_metrics", "mean_pass_at_k",
           "pass_at_k", "qa_metrics"]
