"""`opdkit plot`: one PNG with a panel per metric the run logged, the teacher's ceiling dashed."""
from __future__ import annotations

import json

import pytest

from opdkit.analysis.plots import PANELS, plot_run
from opdkit.errors import RunDirError


def _run(tmp_path, rows):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_plot_draws_one_panel_per_logged_metric_with_the_teacher_ceiling(tmp_path):
    import matplotlib.image

    rows = [{"step": 0, "eval/accuracy": 0.1, "eval/teacher_accuracy": 0.8},
            *({"step": s, "train/loss": 1.0 / s, "rollout/length_mean": 5.0 + s} for s in range(1, 5)),
            {"step": 4, "eval/accuracy": 0.5}]
    out = plot_run(_run(tmp_path, rows))
    assert out.name == "metrics.png"
    height, width, _ = matplotlib.image.imread(out).shape
    # three of the PANELS were logged (loss, length, accuracy): three panels side by side, one row
    assert width / height == pytest.approx(3 * 3.6 / 3.0, rel=0.02)
    assert {k for k, _ in PANELS} >= {"train/loss", "rollout/length_mean", "eval/accuracy"}


def test_plot_refuses_a_run_without_plotted_metrics(tmp_path):
    with pytest.raises(RunDirError, match="none of the plotted metrics"):
        plot_run(_run(tmp_path, [{"step": 1, "other/metric": 1.0}]))
    with pytest.raises(RunDirError, match="not an opdkit run directory"):
        plot_run(tmp_path)
