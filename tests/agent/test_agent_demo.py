"""The agent demonstration script runs every stage at toy sizes (`--quick`: not learning, just wiring)."""

from __future__ import annotations

import json

from bench.agent_demo import main


def test_agent_demo_quick_runs_every_stage(tmp_path):
    assert main(["--out", str(tmp_path), "--quick"]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["doc_tokens_mean"] > 2 * r["sizes"]["window"]  # documents several times the window
    assert 0 < r["chunk_tokens"] < r["sizes"]["window"]
    assert set(r["baseline"]) == {"acc@T0.0", "acc@T0.7"}
    for stage in ("agent_sft", "agent_rl"):
        assert set(r[stage]) == {"acc@T0.0", "acc@T0.7", "remembered@T0.0", "remembered@T0.7"}
    assert all(0.0 <= v <= 1.0 for stage in ("baseline", "agent_sft", "agent_rl") for v in r[stage].values())
    assert (tmp_path / "agent_rl" / "final").is_dir() and "held-out lookup questions" in (tmp_path / "results.md").read_text()
