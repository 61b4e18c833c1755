"""The repository's tests and benchmarks read their data from inside the repository: a clone with nothing
beside it must pass `make test` (the real DocQA samples are in tests/fixtures/docqa_samples)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"""(\.\./shared|["']shared["']\s*/\s*["']data["']|parents\[\d\]\s*/\s*["']shared["'])""")


def test_no_test_or_benchmark_reads_the_shared_folder_beside_the_repo():
    offenders = [f"{p.relative_to(REPO)}:{i}" for folder in ("tests", "bench") for p in (REPO / folder).rglob("*.py")
                 if p != Path(__file__).resolve()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert not offenders, f"read from outside the repository: {offenders}"


def test_the_pattern_sees_such_a_path():
    assert OUTSIDE.search('SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "docqa_samples"')
    assert not OUTSIDE.search('SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "docqa_samples"')
