"""The step-time breakdown: its arithmetic, and that a real run accounts for its step time."""
from __future__ import annotations

import pytest

from conftest import engine_overrides
from opdkit import cli
from opdkit.metrics import read_metrics
from opdkit.profile import PHASES, PhaseTimer, breakdown, format_breakdown


def test_breakdown_means_shares_and_other_close_to_the_step():
    rows = [{"time/step_s": 99.0, "time/rollout_s": 90.0},                  # step 1: warm-up, left out
            {"time/step_s": 4.0, "time/rollout_s": 2.0, "time/backward_s": 1.0},
            {"time/step_s": 6.0, "time/rollout_s": 4.0, "time/backward_s": 1.0}]
    table = {name: (s, share) for name, s, share in breakdown(rows)}
    assert table["step"] == (5.0, 1.0)
    assert table["rollout"] == (3.0, 0.6)
    assert table["backward"] == (1.0, 0.2)
    assert table["other"][0] == pytest.approx(1.0)
    assert sum(share for name, (s, share) in table.items() if name != "step") == pytest.approx(1.0)
    assert "rollout" in format_breakdown(breakdown(rows), 2)


def test_phase_timer_accumulates_repeated_phases():
    timer = PhaseTimer()
    for _ in range(3):
        with timer("teacher"):
            sum(range(1000))
    assert set(timer.metrics()) == {"time/teacher_s"}
    assert timer.seconds["teacher"] > 0


def test_profiled_distill_run_times_every_phase_within_the_step(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["distill", "--profile", *engine_overrides(tiny_dir, out, **{"model.teacher": tiny_dir / "teacher"})]) == 0
    printed = capsys.readouterr().out
    assert "step-time breakdown" in printed
    for phase in ("rollout", "teacher", "student_forward", "backward", "optimizer", "diagnostics", "logging"):
        assert phase in printed
    for row in read_metrics(out / "metrics.jsonl"):
        timed = sum(row.get(f"time/{p}_s", 0.0) for p in PHASES)
        assert {f"time/{p}_s" for p in PHASES[:-1]} <= set(row)
        assert 0 < timed <= row["time/step_s"] * 1.001
