"""Telemetry sinks: JSONL and TensorBoard get the same namespaced scalars; a resumed stage truncates
records past its restart step instead of duplicating them."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from longrl.train.telemetry import Telemetry


def _tb_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_jsonl_and_tensorboard_agree_and_resume_truncates(tmp_path):
    tel = Telemetry(tmp_path, total_steps=3, progress=False)
    for step in (1, 2, 3):
        tel.log(step, {"reward/score": 0.1 * step, "actor/entropy": 2.0, "loss/clip_frac": float("nan"),
                       "note": "text is dropped"})
    tel.write_samples(2, [{"prompt_id": "q1", "response": "r", "pred": "x", "reward": 1.0}])
    tel.close()

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "note" not in rows[0] and abs(rows[2]["reward/score"] - 0.3) < 1e-12
    tb = _tb_scalars(tmp_path)
    assert [s for s, _ in tb["reward/score"]] == [1, 2, 3]
    assert abs(tb["reward/score"][2][1] - 0.3) < 1e-6
    assert "loss/clip_frac" not in tb  # non-finite values stay out of TensorBoard

    # resume from step 1: records of steps 2-3 are dropped before they are written again
    tel = Telemetry(tmp_path, total_steps=3, start_step=1, progress=False, tensorboard=False)
    tel.log(2, {"reward/score": 0.5})
    tel.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reward/score"]) for r in rows] == [(1, 0.1), (2, 0.5)]
    samples = (tmp_path / "rollout_samples.jsonl").read_text()
    assert samples == ""  # the step-2 sample belonged to the discarded future


def test_disabled_telemetry_writes_nothing(tmp_path):
    tel = Telemetry(tmp_path / "off", total_steps=1, enabled=False)
    tel.log(1, {"reward/score": 1.0})
    tel.close()
    assert not (tmp_path / "off").exists()


def _tb_events(run_dir) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in every event file under run_dir/tb, read back raw."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    out = []
    for f in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                value = v.simple_value if v.HasField("simple_value") else float(tensor_util.make_ndarray(v.tensor))
                out.append((v.tag, ev.step, round(value, 6)))
    return out


def test_metrics_jsonl_is_strict_json_with_null_for_non_finite(tmp_path):
    tel = Telemetry(tmp_path, total_steps=1, progress=False, tensorboard=False)
    tel.log(1, {"reward/acc": float("nan"), "loss/kl": float("inf"), "reward/score": 0.5})
    tel.close()
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert "NaN" not in line and "Infinity" not in line
    rec = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert rec == {"step": 1, "reward/acc": None, "loss/kl": None, "reward/score": 0.5}


def test_tensorboard_after_resume_has_each_step_once(tmp_path, monkeypatch):
    """A killed run logged steps 1-3 but checkpointed at 1: after the resume, the event files hold
    steps 2-3 once, with the resumed run's values (as the JSONL does), in an order readers get right."""
    from tensorboard.summary.writer import event_file_writer

    # event file names end in a per-process counter; readers sort names, so '...10' comes before '...9'
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(8))
    tel = Telemetry(tmp_path, total_steps=3, progress=False)
    for step in (1, 2, 3):
        tel.log(step, {"reward/score": 0.1 * step})
    tel.close()
    tel = Telemetry(tmp_path, total_steps=3, start_step=1, progress=False)
    for step in (2, 3):
        tel.log(step, {"reward/score": 0.5 + step})
    tel.close()
    events = _tb_events(tmp_path)
    assert sorted((s, v) for tag, s, v in events if tag == "reward/score") == [(1, 0.1), (2, 2.5), (3, 3.5)]
    tb = _tb_scalars(tmp_path)
    assert [(s, round(v, 6)) for s, v in tb["reward/score"]] == [(1, 0.1), (2, 2.5), (3, 3.5)]
