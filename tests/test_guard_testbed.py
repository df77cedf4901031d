"""The default guard on the tiny testbed (issue target): it fires on an unnormalised top-K run
before the run's accuracy falls below half of its peak, and never on the stop-grad run.

The student starts equal to the teacher (p = q): the unnormalised objective's '+1' gradient
drains P_K toward Q_K / e and sampled accuracy follows; stop-grad has zero gradient there.
"""
from __future__ import annotations

import json

from opdkit.config import load_config
from opdkit.lab.testbed import opd_overrides
from opdkit.runner import run


def _smoothed_accuracy(rows, window=3):
    acc = [r["rollout/accuracy"] for r in rows]
    return [sum(acc[max(0, i - window + 1):i + 1]) / len(acc[max(0, i - window + 1):i + 1]) for i in range(len(acc))]


def _alarms(run_dir):
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "alarm"]


def test_guard_fires_before_the_unnormalised_run_loses_half_its_accuracy(testbed, tmp_path):
    free = run(load_config("distill", overrides=opd_overrides(testbed, "teacher", tmp_path / "free", "topk_rkl_unnorm")
                           + ["guard.enabled=false"]))
    smooth = _smoothed_accuracy(free)
    peak = max(smooth)
    collapsed = [r["step"] for r, a in zip(free, smooth) if a < peak / 2]
    assert collapsed, f"the unguarded run never lost half its accuracy (peak {peak:.2f}): the test would be vacuous"
    guarded = run(load_config("distill", overrides=opd_overrides(testbed, "teacher", tmp_path / "guarded",
                                                                 "topk_rkl_unnorm")))
    alarms = _alarms(tmp_path / "guarded")
    assert alarms, "the default guard never fired on the unnormalised run"
    assert alarms[0]["step"] < collapsed[0], (alarms[0], collapsed[0])
    assert alarms[0]["rule"] == "topk_mass_drain"
    # the rollback switched to the tail objective and halved the LR: the run ends healthier
    assert _smoothed_accuracy(guarded)[-1] > smooth[-1]


def test_guard_never_fires_on_the_stop_grad_run(testbed, tmp_path):
    rows = run(load_config("distill", overrides=opd_overrides(testbed, "teacher", tmp_path / "sg", "topk_rkl_sg")))
    assert len(rows) == 80
    assert _alarms(tmp_path / "sg") == []


def test_sweep_runs_and_tabulates(tmp_path):
    from opdkit.lab import sweep
    results = sweep.run_sweep(tmp_path, steps=3, objectives=("topk_rkl_tail", "rkl"), students=("teacher",))
    assert [(r["student"], r["objective"]) for r in results] == [("teacher", "topk_rkl_tail"), ("teacher", "rkl")]
    assert "topk_rkl_tail" in sweep.format_table(results)
    assert json.loads((tmp_path / "sweep.json").read_text()) == results
