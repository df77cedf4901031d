"""Teacher claims: C4 (a teacher continuing student prefixes, on the carry task) and C6 (a
GRPO-adapted same-size teacher vs a stronger off-format one, on the addition testbed).
"""
from __future__ import annotations

import statistics

from opdkit.engine.config import load_config
from opdkit.engine.session import build_session
from opdkit.lab.carry import MAX_NEW_TOKENS, STUDENT_STEPS, build_carry_testbed
from opdkit.lab.claim import Context, fmt, opd
from opdkit.lab.testbed import build_c6_teachers
from opdkit.models.checkpoint import seeded
from opdkit.tasks.rewards import make_reward

# ----------------------------------------------------------------------------- C4

def run_c4(ctx: Context, seed: int) -> dict:
    """A carry-task teacher of another lineage (its own init and SFT seed, the same problems) continues
    50 sampled answers of the seed's SFT step-300 student, cut at 25/50/75% of their tokens."""
    root = ctx.carry_testbed(seed)
    other = build_carry_testbed(ctx.out / "cache" / f"carry-other-seed{seed}", seed=seed, students=(),
                                init_seed=seed + OTHER_LINEAGE)
    s = build_session(load_config("distill", overrides=[
        f"model.student={root / f'student_{STUDENT_STEPS[0]}'}", f"model.teacher={other / 'teacher'}",
        f"data.train={root / 'task.jsonl'}", f"rollout.max_new_tokens={MAX_NEW_TOKENS}", "reward.kind=numeric",
        f"run.out={ctx.out / 'runs' / f'C4-seed{seed}'}", f"run.seed={seed}", "run.threads=1"]))
    return prefix_rescue(s, s.items[:50], C4_CUTS, seed)


C4_CUTS = (0.25, 0.5, 0.75)
OTHER_LINEAGE = 1000        # init/SFT seed offset of C4's teacher: not trained from the student's lineage


def prefix_rescue(s, items: list, fractions, seed: int) -> dict:
    """Teacher accuracy alone and continuing the student's sampled answers cut at each fraction, and
    per cut the rescue rate (the teacher finishes a wrong student answer right) and the break rate
    (it finishes a right one wrong)."""
    import torch
    score = make_reward(s.cfg.reward.kind)
    answers = [it.example.answer for it in items]
    teacher_prompts = [s.teacher.renderer(it.example) for it in items]
    sample = lambda model, prompts, greedy: s.sampler.sample(model, prompts, max_new_tokens=s.cfg.rollout.max_new_tokens,
                                                             temperature=1.0, top_p=1.0, greedy=greedy).response_ids
    right = lambda responses: [score(t, a) > 0 for t, a in zip(s.tokenizer.batch_decode(responses, skip_special_tokens=True),
                                                                answers)]
    with seeded(seed), torch.no_grad(), s.teacher.context():
        teacher = s.teacher.model()
        student = sample(s.student, [it.prompt_ids for it in items], False)
        student_right = right(student)
        out = {"teacher_alone": statistics.fmean(right(sample(teacher, teacher_prompts, True))),
               "student_alone": statistics.fmean(student_right)}
        for f in fractions:
            cuts = [r[:int(len(r) * f)] for r in student]
            rest = sample(teacher, [p + c for p, c in zip(teacher_prompts, cuts)], True)
            done = right([c + r for c, r in zip(cuts, rest)])
            out[f"teacher_after_{f:g}"] = statistics.fmean(done)
            wrong_ones = [d for d, ok in zip(done, student_right) if not ok]
            right_ones = [d for d, ok in zip(done, student_right) if ok]
            out[f"rescue_{f:g}"] = statistics.fmean(wrong_ones) if wrong_ones else None
            out[f"break_{f:g}"] = 1 - statistics.fmean(right_ones) if right_ones else None
    return out


def describe_c4(results: list[dict]) -> str:
    fr = [f"{f:g}" for f in C4_CUTS]
    col = lambda key: fmt([r.get(key) for r in results])
    return (f"teacher (another lineage) alone {col('teacher_alone')}, student alone {col('student_alone')}; "
            f"after cuts at 25/50/75%: " + " / ".join(col(f"teacher_after_{f}") for f in fr)
            + "; rescue rate of wrong student answers " + " / ".join(col(f"rescue_{f}") for f in fr)
            + "; break rate of right ones " + " / ".join(col(f"break_{f}") for f in fr))


# ----------------------------------------------------------------------------- C6

def run_c6(ctx: Context, seed: int) -> dict:
    paths = build_c6_teachers(ctx.testbed(seed), seed)
    out = {}
    for name, path in paths.items():
        result = opd(ctx, seed, f"C6-{name}", "student_60", "topk_rkl_tail", steps=ctx.steps(120, 200),
                     teacher=path.name, max_new_tokens=16, score_teacher=True)
        rows = result.rows
        out[name] = {"overlap_start": statistics.fmean(r["diag/overlap"] for r in rows[:3]),
                     "teacher_acc": result.before["teacher_greedy_accuracy"],
                     "acc_start": result.before["sampled_accuracy"], "acc_end": result.after["sampled_accuracy"]}
    return out


def describe_c6(results: list[dict]) -> str:
    return "; ".join(f"{label}: held-out greedy accuracy {fmt([r[t].get('teacher_acc') for r in results])}, "
                     f"initial top-K overlap {fmt([r[t]['overlap_start'] for r in results])}, accuracy "
                     f"{fmt([r[t].get('acc_start') for r in results])} -> {fmt([r[t]['acc_end'] for r in results])}"
                     for label, t in (("GRPO-adapted teacher (student size, same format)", "grpo"),
                                      ("larger off-format teacher", "offformat")))
