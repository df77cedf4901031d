"""The OPD-step benchmark runs end to end on the tiny pair (slow: two fresh processes with TRL)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT.parent / "shared" / "anchors"


@pytest.mark.slow
@pytest.mark.skipif(not (ANCHORS / "bench_distill.py").is_file(), reason="../shared/anchors is not beside the repo")
def test_tiny_benchmark_times_both_sides_with_the_same_batch(tmp_path):
    pytest.importorskip("trl")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "opd_step_vs_trl.py"), "--only", "tiny", "--steps", "3",
                    "--out", str(tmp_path)], check=True, cwd=ROOT)
    report = json.loads((tmp_path / "results.json").read_text())
    tiny = report["tiny"]
    assert set(tiny) == {"trl_distill_rkl", "opdkit_rkl"}
    for runs in tiny.values():
        summary = runs[0]
        assert summary["tokens_per_s_step"] > 0 and summary["process_peak_rss_mib"] > 0
        assert all(0 < t <= 4 * 64 for t in summary["completion_tokens_per_step"])   # 4 prompts x 64 new tokens
    assert report["gemm_peak_gflops"] > 0


def test_missing_anchor_harness_is_one_error_line_not_a_traceback(tmp_path):
    """A fresh clone without ../shared/anchors: exit 2 and one `error:` line naming the fix; nothing written."""
    env = {**os.environ, "OPDKIT_ANCHORS": str(tmp_path / "no-anchors")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "opd_step_vs_trl.py"), "--only", "tiny",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opd_step_vs_trl: error:") and "no-anchors" in lines[0]
    assert not (tmp_path / "out").exists()
