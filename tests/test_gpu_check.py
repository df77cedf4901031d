"""benchmarks/gpu_check.py, the GPU evidence script, runs its own code on the CPU (--dry-run).

The GPU machine lacks gguf, wordcloud and vllm: a directory of modules that refuse to
import is put first on the path for gguf and wordcloud, so an import of either in the
measured code fails here as it would there (vllm is absent here too; a stand-in module
would make TRL believe it is installed). The default-suite test runs the env and opdkit sections (~20 s);
the whole dry run (all sections, ~2 min on 2 busy cores) is marked slow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def dry_run(tmp_path: Path, sections: str, *extra: str) -> dict:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("gguf", "wordcloud"):
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "gpu"),
                    "--sections", sections, *extra], check=True, cwd=ROOT, env=env, capture_output=True, text=True)
    assert sorted(p.name for p in (tmp_path / "gpu").iterdir()) == ["gpu_check.log", "results.json", "results.md"]
    report = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert "CPU dry run, not GPU figures" in (tmp_path / "gpu" / "results.md").read_text()
    assert "vllm" in next(iter(report["not_run"].values()))
    return report


def test_dry_run_measures_opdkit_step_by_phase_with_the_models_full_vocabulary(tmp_path):
    report = dry_run(tmp_path, "env,opdkit")
    opd = report["sections"]["opdkit"]
    assert opd["status"] == "ok", opd
    result = opd["result"]
    setting = report["env"]["setting"]
    assert result["steps"] == setting["steps"]
    assert all(0 < t <= setting["batch"] * setting["response"] for t in result["tokens_per_step"])
    assert {"rollout", "teacher", "student_forward", "backward", "optimizer"} <= set(result["phases_median_s"])
    assert sum(result["phases_median_s"].values()) <= result["median_step_s"] * 1.5
    tokenizer = json.loads((tmp_path / "gpu_work" / "models" / "student" / "arch.json").read_text())
    assert tokenizer["vocab"] == report["env"]["student"]["vocab"]          # scored over every id of the lm-head
    assert [r["quantity"] for r in report["scaling"]][0].startswith("rollout s")


@pytest.mark.slow
def test_whole_dry_run_every_section_and_trl_agrees_with_opdkit(tmp_path):
    pytest.importorskip("trl")
    report = dry_run(tmp_path, "env,opdkit,trl,objectives,gpu_tests,fsdp")
    sections = report["sections"]
    assert all(s["status"] == "ok" for s in sections.values()), sections
    rows = {(r["n"], r["name"]): r for r in sections["objectives"]["result"]["rows"]}
    for (n, name), r in rows.items():
        if name in ("opdkit rkl", "opdkit jsd 0.5"):
            assert next(v for k, v in r.items() if k.startswith("max_grad_diff")) < 1e-4     # same math as TRL's loss
            ref = rows[(n, name.replace("opdkit", "trl"))]
            assert r["loss"] == pytest.approx(ref["loss"], rel=1e-4)
    assert sections["fsdp"]["equal_within_1e-4"] and sections["fsdp"]["fsdp"]["fsdp_modules"] > 0
    assert "skipped" in sections["gpu_tests"]["pytest"] or "passed" in sections["gpu_tests"]["pytest"]


def test_memory_plan_picks_the_qwen3_8b_pair_on_an_h200_and_falls_back_when_it_cannot_fit():
    from gpu_shapes import QWEN3_0_6B, QWEN3_1_7B, QWEN3_4B, QWEN3_8B, choose_pair, plan_memory
    teacher, student, plan = choose_pair(139.0, batch=8, prompt=70, response=256)
    assert (teacher, student) == (QWEN3_8B, QWEN3_1_7B)
    # bf16 teacher weights + 8 B/param student state alone: the plan can only be larger
    assert plan["total"] > (QWEN3_8B.params() * 2 + QWEN3_1_7B.params() * 8) / 2**30
    small = plan_memory(QWEN3_4B, QWEN3_0_6B, 8, 70, 256)["total"]
    teacher, student, _ = choose_pair(small * 1.3, batch=8, prompt=70, response=256)
    assert (teacher, student) == (QWEN3_4B, QWEN3_0_6B)
    assert choose_pair(small, batch=8, prompt=70, response=256) is None


def test_unknown_section_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--sections", "vllm",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("gpu_check: error: unknown sections ['vllm']")
    assert not (tmp_path / "o").exists()


def test_a_section_past_its_budget_is_killed_and_reported_and_the_report_is_still_written(tmp_path):
    report = dry_run(tmp_path, "env,objectives", "--budget-scale", "0.005")          # 0.45 s: cannot finish
    objectives = report["sections"]["objectives"]
    assert objectives["status"].startswith("timed out") and objectives["seconds"] < 30
    assert report["env"]["setting"]["batch"] > 0                # what came before the timeout is kept
