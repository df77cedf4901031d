"""Teacher claims on the addition testbed: C4 (the teacher continuing student prefixes) and
C6 (a GRPO-adapted same-size teacher vs a stronger off-format one).
"""
from __future__ import annotations

import statistics

from opdkit.analysis.probes import probe_prefix
from opdkit.engine.config import load_config
from opdkit.engine.session import build_session
from opdkit.lab.carry import MAX_NEW_TOKENS, STUDENT_STEPS
from opdkit.lab.claim import Context, fmt, opd, tail_mean
from opdkit.lab.testbed import build_c6_teachers

# ----------------------------------------------------------------------------- C4

def run_c4(ctx: Context, seed: int) -> dict:
    """The carry-task teacher continues sampled answers of an early SFT checkpoint of itself."""
    root = ctx.carry_testbed(seed)
    s = build_session(load_config("distill", overrides=[
        f"model.student={root / f'student_{STUDENT_STEPS[0]}'}", f"model.teacher={root / 'teacher'}",
        f"data.train={root / 'task.jsonl'}", f"rollout.max_new_tokens={MAX_NEW_TOKENS}", "reward.kind=numeric",
        f"run.out={ctx.out / 'runs' / f'C4-seed{seed}'}", f"run.seed={seed}", "run.threads=1"]))
    return probe_prefix(s, fractions=C4_CUTS, prompts=50, seed=seed)


C4_CUTS = (0.25, 0.5, 0.75)


def judge_c4(results: list[dict]) -> tuple[str, str]:
    fr = [f"{f:g}" for f in C4_CUTS]
    mean = {f: statistics.fmean(r[f"teacher_after_{f}"] for r in results) for f in fr}
    alone = statistics.fmean(r["teacher_alone"] for r in results)
    drops = all(mean[f] < alone for f in fr)
    deeper = all(a >= b for a, b in zip([mean[f] for f in fr], [mean[f] for f in fr][1:]))
    measured = (f"teacher alone {fmt([r['teacher_alone'] for r in results])}; after cuts at 25/50/75%: "
                + " / ".join(fmt([r[f"teacher_after_{f}"] for r in results]) for f in fr))
    if alone < 0.5:             # precondition: a teacher that cannot do the task alone shows nothing
        return "inconclusive", measured + " (teacher alone < 0.5)"
    return ("reproduced" if drops and deeper else "not reproduced"), measured


# ----------------------------------------------------------------------------- C6

def run_c6(ctx: Context, seed: int) -> dict:
    paths = build_c6_teachers(ctx.testbed(seed), seed)
    out = {}
    for name, path in paths.items():
        rows = opd(ctx, seed, f"C6-{name}", "student_60", "topk_rkl_tail", steps=ctx.steps(120, 200),
                   teacher=path.name, max_new_tokens=8)
        out[name] = {"overlap_start": statistics.fmean(r["diag/overlap"] for r in rows[:3]),
                     "acc_start": statistics.fmean(r["rollout/accuracy"] for r in rows[:3]),
                     "acc_end": tail_mean(rows, "rollout/accuracy")}
    return out


def judge_c6(results: list[dict]) -> tuple[str, str]:
    mean = lambda t, key: statistics.fmean(r[t][key] for r in results)
    ok = mean("grpo", "acc_end") > mean("offformat", "acc_end") and \
        mean("grpo", "overlap_start") > mean("offformat", "overlap_start")
    measured = "; ".join(f"{label}: initial top-K overlap {fmt([r[t]['overlap_start'] for r in results])}, accuracy "
                         f"{fmt([r[t]['acc_start'] for r in results])} -> {fmt([r[t]['acc_end'] for r in results])}"
                         for label, t in (("GRPO-adapted teacher (student size, same format)", "grpo"),
                                          ("larger off-format teacher", "offformat")))
    return ("reproduced" if ok else "not reproduced"), measured
