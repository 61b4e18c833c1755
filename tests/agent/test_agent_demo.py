"""The agent demonstration script runs every stage at toy sizes (`--quick`: not learning, just wiring)."""

from __future__ import annotations

import json

from bench.agent_demo import main


def test_agent_demo_quick_runs_every_stage(tmp_path):
    assert main(["--out", str(tmp_path), "--quick"]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["doc_tokens_mean"] > 2 * r["sizes"]["window"]  # documents several times the window
    assert 0 < r["chunk_tokens"] < r["sizes"]["window"]
    for key in ("baseline_acc", "agent_sft_acc", "agent_rl_acc", "agent_sft_remembered", "agent_rl_remembered"):
        assert 0.0 <= r[key] <= 1.0
    assert (tmp_path / "agent_rl" / "final").is_dir() and (tmp_path / "results.md").read_text().startswith("| held-out")
