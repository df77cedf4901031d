"""benchmarks/scaling_vs_trl.py and its tables, plot and TRL shim, without real models (the tiny run is slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
ANCHORS = ROOT.parent / "shared" / "anchors"
sys.path.insert(0, str(BENCH))

import scaling_tables  # noqa: E402
import scaling_vs_trl  # noqa: E402
from run_anchor_sized import patch_config, sized_overrides  # noqa: E402

needs_anchors = pytest.mark.skipif(not (ANCHORS / "bench_distill.py").is_file(),
                                   reason="../shared/anchors is not beside the repo")


def run_script(*args, env=None):
    return subprocess.run([sys.executable, str(BENCH / "scaling_vs_trl.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_missing_anchor_harness_is_one_error_line_and_writes_nothing(tmp_path):
    done = run_script("--plan", "tiny", "--out", str(tmp_path / "out"), env={"OPDKIT_ANCHORS": str(tmp_path / "none")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scaling_vs_trl: error:") and "none" in lines[0]
    assert not (tmp_path / "out").exists()


@needs_anchors
def test_unknown_point_names_the_plan_points(tmp_path):
    done = run_script("--plan", "tiny", "--points", "tiny-L999-B4", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "tiny-L8-B4" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@needs_anchors
def test_dry_run_lists_each_scheduled_arm_with_its_length_and_batch(tmp_path):
    pytest.importorskip("trl")
    done = run_script("--plan", "tiny", "--dry-run", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(scaling_vs_trl.schedule(scaling_vs_trl.PLANS["tiny"]))
    trl = [l for l in lines if "trl_fp32" in l and "tiny-L32-B4" in l]
    assert trl and "ANCHOR_MAX_COMPLETION=32" in trl[0] and "ANCHOR_BATCH=4" in trl[0]
    assert any("rollout.max_new_tokens=32" in l and "optim.micro_batch=4" in l for l in lines)
    assert not (tmp_path / "out").exists()


def test_schedule_runs_every_point_before_repeats_and_alternates_the_order():
    P = scaling_vs_trl.Point
    points = [P("a", 8, 1, 2, 2, ("x", "y")), P("b", 8, 1, 2, 1, ("x", "y"))]
    order = [(r, p.pair, arm) for r, p, arm in scaling_vs_trl.schedule(points)]
    assert order == [(0, "a", "x"), (0, "a", "y"), (0, "b", "x"), (0, "b", "y"), (1, "a", "y"), (1, "a", "x")]


def test_watchdog_kills_an_arm_over_the_memory_cap(tmp_path):
    grab = "import time; b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    status, peak, wall = scaling_vs_trl.watch([sys.executable, "-c", grab], dict(os.environ), tmp_path,
                                              tmp_path / "log", cap_mib=150, timeout_s=60)
    assert status == "over_cap" and peak > 150 and wall < 25
    status, peak, _ = scaling_vs_trl.watch([sys.executable, "-c", "pass"], dict(os.environ), tmp_path, tmp_path / "log",
                                           cap_mib=10_000, timeout_s=60)
    assert status == "ok" and 0 < peak < 10_000


def test_sized_overrides_reach_the_anchors_distillation_config():
    assert sized_overrides({"ANCHOR_MAX_COMPLETION": "1024"}) == {"max_completion_length": 1024}
    with pytest.raises(SystemExit):
        sized_overrides({"ANCHOR_BATCH": "0"})
    distillation = pytest.importorskip("trl.experimental.distillation")
    original = distillation.DistillationConfig
    try:
        patch_config({"max_completion_length": 1024, "per_device_train_batch_size": 2})
        cfg = distillation.DistillationConfig(output_dir="unused", max_completion_length=64, per_device_train_batch_size=4,
                                              use_cpu=True, report_to="none")
        assert (cfg.max_completion_length, cfg.per_device_train_batch_size) == (1024, 2)
    finally:
        distillation.DistillationConfig = original


def fake_report() -> dict:
    """Rows shaped like the driver's, with round numbers chosen here so the ratios are known."""
    def row(point, length, arm, tps, rss, status="ok", repeat=0):
        r = {"point": point, "pair": point.split("-")[0], "length": length, "batch": 4, "arm": arm, "repeat": repeat,
             "status": status, "process_peak_rss_mib": rss, "load_before": 1.0, "load_after": 2.0}
        return {**r, "tokens_per_s_step": tps, "median_step_wall_s": 4 * length / tps} if status == "ok" else r
    rows = [row("smol-L64-B4", 64, "trl_fp32", 100.0, 2000.0), row("smol-L64-B4", 64, "trl_fp32", 120.0, 2000.0, repeat=1),
            row("smol-L64-B4", 64, "opdkit_default", 176.0, 1400.0), row("smol-L64-B4", 64, "trl_bf16", 100.0, 2000.0),
            row("smol-L64-B4", 64, "opdkit_bf16", 250.0, 1000.0),
            row("smol-L1024-B4", 1024, "trl_fp32", 10.0, 9000.0, status="over_cap"),
            row("smol-L1024-B4", 1024, "opdkit_default", 20.0, 3000.0),
            row("gemma-L64-B4", 64, "trl_fp32", 50.0, 6000.0), row("gemma-L64-B4", 64, "opdkit_default", 60.0, 3000.0)]
    return {"machine": {"cpu": "test", "cores": 2, "torch": "x", "isa": []}, "plan": "full", "threads": 1,
            "started_utc": "t", "rows": rows, "floor": {"status": "ok", "four_gemm_floor_s": 2.0,
                                                        "chunked_rkl": {"median_s": 3.0}}}


def test_tables_compute_ratios_medians_and_target_verdicts_from_the_rows():
    text = scaling_tables.render_all(fake_report())
    # TRL fp32's median over its two repeats is 110 tok/s: opdkit 176 / 110 = 1.60x; RSS 1400 / 2000 = 0.70x.
    assert "| smol-L64-B4 | opdkit_default | 1/1 | 1.45 | 176.0 | 1.60 | 1400 | 0.70 |" in text
    assert "1.60x at 0.70x | met" in text                                  # >= 1.5x at <= 0.75x
    assert "2.27x at 0.50x | met" in text                                  # best arm: opdkit_bf16, 250 / 110
    assert "= 1.50x | missed by 1.15x" in text                             # 3.0 / 2.0 against 1.3x
    assert "> 9000 (killed)" in text and "0/1 (over_cap)" in text
    assert "| <= 0.33x | met |" in text                                      # 3000 / 9000 (TRL killed at 9000)
    assert "(opdkit_bf16 / trl_bf16) | 2.50 | 0.50 |" in text


def test_plot_writes_a_png_from_the_rows(tmp_path):
    pytest.importorskip("matplotlib")
    from scaling_plot import plot
    plot(fake_report(), tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@needs_anchors
def test_tiny_plan_runs_every_arm_of_both_sides(tmp_path):
    pytest.importorskip("trl")
    subprocess.run([sys.executable, str(BENCH / "scaling_vs_trl.py"), "--plan", "tiny", "--points", "tiny-L32-B4",
                    "--out", str(tmp_path)], check=True, cwd=ROOT)
    report = json.loads((tmp_path / "results.json").read_text())
    assert {r["arm"] for r in report["rows"]} == {"trl_fp32", "opdkit_default"}
    for r in report["rows"]:
        assert r["status"] == "ok" and r["process_peak_rss_mib"] > 0 and r["tokens_per_s_step"] > 0
        assert all(0 < t <= 4 * 32 for t in r["completion_tokens_per_step"])
    assert "### Targets (issue 19)" in (tmp_path / "tables.md").read_text()


def test_per_repeat_ratio_pairs_each_arm_with_trl_of_the_same_repeat():
    report = fake_report()
    report["rows"].append({**report["rows"][2], "repeat": 1, "tokens_per_s_step": 240.0})   # opdkit_default, repeat 1
    assert scaling_tables.per_repeat(report, "smol-L64-B4", "opdkit_default") == "1.76 / 2.00"   # 176/100, 240/120
    assert scaling_tables.per_repeat(report, "smol-L64-B4", "opdkit_bf16") == ""                 # one repeat: no list


def test_sampler_memory_arms_sample_the_same_rows_in_process():
    """Each arm's measurement (run here in-process on the tiny model): same rows, a peak, the predicted buffers."""
    from opd_step_vs_trl import ensure_tiny
    from sampler_memory import ARMS, child
    ensure_tiny(BENCH / "out" / "tiny-6l")
    for arm in ARMS:
        r = child(arm, str(BENCH / "out" / "tiny-6l"), drop_every=3, length=8, batch=2)
        assert r["arm"] == arm and 0 < r["new_tokens"] <= 2 * 8 and r["peak_over_before_mib"] >= 0
        assert r["predicted_scores_mib"] == 3 * 2 * 8 * r["vocab"] * 4 / 2**20


@pytest.mark.slow
def test_sampler_memory_measures_both_arms_on_the_tiny_model():
    """benchmarks/sampler_memory.py --tiny: both arms sample the same number of rows; the table prints."""
    done = subprocess.run([sys.executable, str(BENCH / "sampler_memory.py"), "--tiny", "--length", "16"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(l) for l in done.stdout.splitlines() if l.startswith("{")]
    assert [r["arm"] for r in rows] == ["opdkit_hf_sampler", "generate_without_scores"]
    for r in rows:
        assert 0 < r["new_tokens"] <= 4 * 16 and r["peak_over_before_mib"] >= 0
        assert r["predicted_scores_mib"] == 3 * 4 * 16 * r["vocab"] * 4 / 2**20
    assert "| opdkit_hf_sampler | 4 x 16 |" in done.stdout


def test_sampler_memory_without_a_model_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "sampler_memory.py"), "--model-dir", str(tmp_path / "none")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("sampler_memory: error:") and len(done.stderr.strip().splitlines()) == 1
