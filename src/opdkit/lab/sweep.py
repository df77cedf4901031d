"""Objectives x starting students on the tiny testbed: which top-K objective survives a far student?

    opdkit lab sweep --out runs/sweep

Builds the testbed (teacher SFT'd to accuracy 1.0; students = its SFT checkpoints at steps
60, 100 and the teacher itself), runs OPD from each student with each objective (K = 5,
lr 3e-4, 150 steps, 32 sampled answers per step, guard off), and reports the sampled
accuracy (mean of the last 10 steps), P_K and the student's entropy at the end.
"""
from __future__ import annotations

import json
from pathlib import Path

from opdkit.engine.config import load_config
from opdkit.engine.runner import run
from opdkit.lab.claim import tail_mean
from opdkit.lab.testbed import build_testbed, opd_overrides

OBJECTIVES = ("topk_rkl_unnorm", "topk_rkl_sg", "topk_rkl_tail", "rkl")
STUDENTS = ("student_60", "student_100", "teacher")


def run_sweep(out: str | Path, steps: int = 150, objectives=OBJECTIVES, students=STUDENTS) -> list[dict]:

    out = Path(out)
    root = build_testbed(out / "testbed", students=tuple(int(s.split("_")[1]) for s in students if s != "teacher"))
    results = []
    for student in students:
        for objective in objectives:
            overrides = opd_overrides(root, student, out / f"{student}-{objective}", objective, steps=steps)
            if objective == "rkl":
                overrides = [o for o in overrides if not o.startswith("objective.options")]
            rows = run(load_config("distill", overrides=overrides + ["guard.enabled=false"]))
            results.append({"student": student, "objective": objective,
                            "accuracy_start": rows[0]["rollout/accuracy"],
                            "accuracy_end": tail_mean(rows, "rollout/accuracy"),
                            "p_k_end": tail_mean(rows, "diag/p_k"),
                            "entropy_end": tail_mean(rows, "diag/student_entropy")})
    (out / "sweep.json").write_text(json.dumps(results, indent=2))
    return results


def format_table(results: list[dict]) -> str:
    lines = [f"{'student':<12} {'objective':<16} {'acc start':>9} {'acc end':>8} {'P_K end':>8} {'H(p) end':>9}",
             "-" * 66]
    for r in results:
        pk = "-" if r["p_k_end"] is None else f"{r['p_k_end']:.3f}"
        lines.append(f"{r['student']:<12} {r['objective']:<16} {r['accuracy_start']:>9.2f} {r['accuracy_end']:>8.2f} "
                     f"{pk:>8} {r['entropy_end']:>9.2f}")
    return "\n".join(lines)
