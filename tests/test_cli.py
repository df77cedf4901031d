"""The `opdkit` entry point, run as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

from opdkit.objectives import OBJECTIVES


def _opdkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "opdkit.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_objectives_lists_every_name_with_its_fixed_point():
    out = _opdkit("objectives")
    assert out.returncode == 0, out.stderr
    for name, spec in OBJECTIVES.items():
        assert f"\n{name} " in "\n" + out.stdout
        assert spec.fixed_point in out.stdout
    assert "BIASED" in out.stdout                # the unnormalised top-K is flagged


def test_lab_fixed_points_writes_json_and_plot(tmp_path):
    out = _opdkit("lab", "fixed-points", "--out", str(tmp_path), "--positions", "8", "--vocab", "30", "--k", "4")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((tmp_path / "fixed_points.json").read_text())
    assert {r["verdict"] for r in data["rows"]} == {"as derived"}
    assert "unnorm, teacher top-K" in out.stdout


def test_unknown_command_fails_with_usage():
    out = _opdkit("distil")
    assert out.returncode == 2 and "invalid choice" in out.stderr
