"""The metric log: truncation on resume, missing trackers."""
from __future__ import annotations

import importlib.util

import pytest

from opdkit.engine.metrics import MetricLog, read_metrics


def test_metric_log_truncates_after_a_step(tmp_path):
    log = MetricLog(tmp_path)
    for step in range(1, 6):
        log.log(step, {"train/loss": float(step), "bad": float("nan")})
    log.truncate_after(3)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["bad"] == "nan"


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed here")
def test_missing_tracker_is_a_note_not_a_crash(tmp_path, capsys):
    log = MetricLog(tmp_path, ["tensorboard"])
    log.log(1, {"train/loss": 1.0})
    assert log.trackers == [] and "not installed" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown tracker"):
        MetricLog(tmp_path, ["mlflow"])
