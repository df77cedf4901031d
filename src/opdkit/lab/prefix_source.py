"""The Decoupling 2x2 on the tiny testbed: prefix source x KL direction, plus a mixture of both.

    OMP_NUM_THREADS=1 opdkit lab prefix-source --out runs/prefix-source

Start: the testbed's step-60 SFT student (a partly trained student of the addition task),
the SFT teacher (greedy accuracy 1.0). Cells (`opdkit.engine.prefix.DECOUPLING_CELLS`): teacher or
student prefixes x forward (fkl) or reverse (rkl) full-vocabulary KL, and `mix`: half the
responses student-sampled, kl_mix with lam = 0.5. Each cell runs 60 steps (32 responses
per step, lr 3e-4, guard off) from the same student for each seed, and is evaluated before
and after on the 25 task prompts: greedy accuracy and eval/teacher_kl, the token-mean
KL(student || teacher) on the student's own samples (the states it visits at test time).

Written before the run (the hypotheses, statistics and thresholds `judge` applies):
- H1 (exposure bias): on the student's own samples, student prefixes end closer to the
  teacher than teacher prefixes with the same KL direction: for fkl and for rkl, the
  seed-mean end eval/teacher_kl of the teacher-prefix cell is >= 1.1 x that of the
  student-prefix cell. The task's answer is one digit, so only the positions after the
  first token differ between sources; the effect may be small, which is what this measures.
- H2 (accuracy is decided by the first token, whose prefix is the prompt in every cell):
  the seed-mean end greedy accuracies of the four cells lie within 0.10 of each other.
- H3 (the mixture interpolates): the mixture's seed-mean end eval/teacher_kl lies within
  [min, max] of the four cells' seed means, widened by 10% of that range.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from opdkit.engine.config import load_config
from opdkit.engine.prefix import DECOUPLING_CELLS
from opdkit.engine.runner import run
from opdkit.lab.testbed import build_testbed

MIX = {"rollout.source": "mix", "rollout.student_fraction": 0.5, "objective.name": "kl_mix",
       "objective.options": "{lam: 0.5}"}
CELLS = {**{name: {k: v for k, v in cell.items() if k != "why"} for name, cell in DECOUPLING_CELLS.items()}, "mix": MIX}
STUDENT = "student_60"


def cell_overrides(root: Path, out: Path, cell: dict, seed: int, steps: int) -> list[str]:
    return [f"model.student={root / STUDENT}", f"model.teacher={root / 'teacher'}", f"data.train={root / 'task.jsonl'}",
            f"data.eval={root / 'task.jsonl'}", f"run.out={out}", f"optim.steps={steps}", "optim.prompts_per_step=32",
            "optim.micro_batch=32", "optim.lr=3e-4", "rollout.max_new_tokens=4", f"run.eval_every={steps}",
            "run.eval_limit=25", f"run.save_every={steps}", "run.progress=false", "run.threads=1", f"run.seed={seed}",
            "guard.enabled=false", "run.sample_every=0", *[f"{k}={v}" for k, v in cell.items()]]


def run_cell(root: Path, out: Path, cell: dict, seed: int, steps: int) -> dict:
    run(load_config("distill", overrides=cell_overrides(root, out, cell, seed, steps)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]   # step 0's eval too
    evals = [r for r in rows if "eval/accuracy" in r]
    start, end = evals[0], evals[-1]
    fractions = [r["rollout/student_fraction"] for r in rows if "rollout/student_fraction" in r]
    return {"accuracy_start": start["eval/accuracy"], "accuracy_end": end["eval/accuracy"],
            "teacher_kl_start": start["eval/teacher_kl"], "teacher_kl_end": end["eval/teacher_kl"],
            "student_fraction": sum(fractions) / len(fractions)}


def run_experiment(out: str | Path, seeds: int = 3, steps: int = 60) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    root = build_testbed(out / "testbed", students=(60,))
    results = {name: [run_cell(root, out / f"{name}-seed{seed}", cell, seed, steps) for seed in range(seeds)]
               for name, cell in CELLS.items()}
    report = {"results": results, "judgement": judge(results), "seeds": seeds, "steps": steps,
              "wall_s": time.perf_counter() - t0}
    (out / "prefix_source.json").write_text(json.dumps(report, indent=2))
    return report


def _mean(runs: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in runs)


def judge(results: dict) -> dict:
    """The three hypotheses of the module docstring, each with its statistic and verdict."""
    kl = {name: _mean(runs, "teacher_kl_end") for name, runs in results.items()}
    acc = {name: _mean(runs, "accuracy_end") for name, runs in results.items()}
    ratios = {d: kl[f"teacher_{d}"] / max(kl[f"student_{d}"], 1e-12) for d in ("fkl", "rkl")}
    cells = [kl[n] for n in DECOUPLING_CELLS]
    low, high = min(cells), max(cells)
    slack = 0.1 * (high - low)
    spread = max(acc[n] for n in DECOUPLING_CELLS) - min(acc[n] for n in DECOUPLING_CELLS)
    return {
        "H1": {"statistic": ratios, "holds": all(r >= 1.1 for r in ratios.values())},
        "H2": {"statistic": spread, "holds": spread <= 0.10},
        "H3": {"statistic": kl["mix"], "range": [low - slack, high + slack],
               "holds": low - slack <= kl["mix"] <= high + slack},
    }


def format_table(report: dict) -> str:
    lines = [f"{'cell':<12} {'acc start':>9} {'acc end':>13} {'KL start':>9} {'KL end':>15} {'student share':>13}",
             "-" * 77]
    for name, runs in report["results"].items():
        def ms(key):
            values = [r[key] for r in runs]
            sd = statistics.pstdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.3f}+-{sd:.3f}"
        lines.append(f"{name:<12} {_mean(runs, 'accuracy_start'):>9.2f} {ms('accuracy_end'):>13} "
                     f"{_mean(runs, 'teacher_kl_start'):>9.3f} {ms('teacher_kl_end'):>15} "
                     f"{_mean(runs, 'student_fraction'):>13.2f}")
    lines.append("")
    for key, verdict in report["judgement"].items():
        lines.append(f"{key}: {'holds' if verdict['holds'] else 'does not hold'} "
                     f"(statistic {json.dumps(verdict['statistic'])})")
    return "\n".join(lines)
