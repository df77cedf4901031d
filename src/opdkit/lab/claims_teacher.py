"""Teacher claims on the addition testbed: C4 (the teacher continuing student prefixes) and
C6 (a GRPO-adapted same-size teacher vs a stronger off-format one).
"""
from __future__ import annotations

import statistics

from opdkit.lab.claim import Context, fmt, opd


# ----------------------------------------------------------------------------- C4

def run_c4(ctx: Context, seed: int) -> dict:
    """The carry-task teacher continues sampled answers of an early SFT checkpoint of itself."""
    from opdkit.config import load_config
    from opdkit.lab.carry import MAX_NEW_TOKENS, STUDENT_STEPS
    from opdkit.probes import probe_prefix
    from opdkit.session import build_session
    root = ctx.carry_testbed(seed)
    s = build_session(load_config("distill", overrides=[
        f"model.student={root / f'student_{STUDENT_STEPS[0]}'}", f"model.teacher={root / 'teacher'}",
        f"data.train={root / 'task.jsonl'}", f"rollout.max_new_tokens={MAX_NEW_TOKENS}", "reward.kind=numeric",
        f"run.out={ctx.out / 'runs' / f'C4-seed{seed}'}", f"run.seed={seed}", "run.threads=1"]))
    return probe_prefix(s, fractions=C4_CUTS, prompts=50, seed=seed)


C4_CUTS = (0.25, 0.5, 0.75)


def describe_c4(results: list[dict]) -> str:
    fr = [f"{f:g}" for f in C4_CUTS]
    return (f"teacher alone {fmt([r['teacher_alone'] for r in results])}; after cuts at 25/50/75%: "
            + " / ".join(fmt([r[f"teacher_after_{f}"] for r in results]) for f in fr))


# ----------------------------------------------------------------------------- C6

def run_c6(ctx: Context, seed: int) -> dict:
    from opdkit.lab.testbed import build_c6_teachers
    paths = build_c6_teachers(ctx.testbed(seed), seed)
    out = {}
    for name, path in paths.items():
        result = opd(ctx, seed, f"C6-{name}", "student_60", "topk_rkl_tail", steps=ctx.steps(120, 200),
                     teacher=path.name, max_new_tokens=8)
        rows = result.rows
        out[name] = {"overlap_start": statistics.fmean(r["diag/overlap"] for r in rows[:3]),
                     "acc_start": result.before["sampled_accuracy"], "acc_end": result.after["sampled_accuracy"]}
    return out


def describe_c6(results: list[dict]) -> str:
    return "; ".join(f"{label}: initial top-K overlap {fmt([r[t]['overlap_start'] for r in results])}, accuracy "
                         f"{fmt([r[t].get('acc_start') for r in results])} -> {fmt([r[t]['acc_end'] for r in results])}"
                         for label, t in (("GRPO-adapted teacher (student size, same format)", "grpo"),
                                          ("larger off-format teacher", "offformat")))
