"""Top-K OPD claims on the addition testbed: C1 (unnormalised collapse), C2 (stop-grad),
C3 (renormalised), C5 (hedging), C7 (SFT warm start), C10 (RKL vs FKL, then GRPO).

Thresholds live in `claims.py` next to each hypothesis; the judges here are their code.
Each of these claims also runs sampled-token OPD (`sampled_rkl`, the per-token advantage
-(log p_s - log p_t) on the sampled token only) from the same starts as a baseline: its
numbers are reported under "baseline" and never enter a verdict.
"""
from __future__ import annotations

import statistics

from opdkit.analysis.probes import _hedge_probability, hedge_token_ids
from opdkit.engine.config import load_config
from opdkit.engine.export import export_run
from opdkit.engine.runner import run
from opdkit.engine.session import build_session
from opdkit.lab.claim import Context, fmt, opd, summary, tail_mean
from opdkit.lab.testbed import build_hedge_teacher

STEPS = (120, 200)          # OPD steps (quick, full) for every run here


# ----------------------------------------------------------------------------- the sampled-token baseline

def sampled_baseline(ctx: Context, seed: int, starts: tuple[str, ...]) -> dict:
    """Sampled-token OPD from each start; run once per (seed, start) and shared between claims."""
    out = {}
    for start in starts:
        key = ("sampled_rkl", seed, start)
        if key not in ctx.memo:
            ctx.memo[key] = summary(opd(ctx, seed, f"sampled-{start}", start, "sampled_rkl", steps=ctx.steps(*STEPS)))
        out[start] = ctx.memo[key]
    return out


def baseline_text(results: list[dict]) -> str:
    """'; sampled-token OPD baseline from S: accuracy a -> b, ...' for each start ('' without baselines)."""
    if not results or "baseline" not in results[0]:
        return ""
    return "; sampled-token OPD baseline " + ", ".join(
        f"from {start}: accuracy {fmt([r['baseline'][start]['acc_start'] for r in results])} -> "
        f"{fmt([r['baseline'][start]['acc_end'] for r in results])}" for start in results[0]["baseline"])


# ----------------------------------------------------------------------------- C1

def run_c1(ctx: Context, seed: int) -> dict:
    steps = ctx.steps(*STEPS)
    out = {}
    for k in (2, 8):
        out[f"K{k}"] = summary(opd(ctx, seed, f"C1-unnorm-K{k}", "teacher", "topk_rkl_unnorm", k=k, steps=steps))
    return {**out, "baseline": sampled_baseline(ctx, seed, ("teacher",))}


def judge_c1(results: list[dict]) -> tuple[str, str]:
    ok = []
    for r in results:
        k2, k8 = r["K2"], r["K8"]
        collapsed = all(x["collapse_step"] is not None for x in (k2, k8))
        ratio_ok = all(x["pk_qk_end"] is not None and 0.2 <= x["pk_qk_end"] <= 0.55 for x in (k2, k8))
        earlier = collapsed and k2["collapse_step"] <= k8["collapse_step"]
        longer = all(x["len_end"] > x["len_start"] for x in (k2, k8))
        ok.append(collapsed and ratio_ok and earlier and longer)
    measured = (f"P_K/Q_K end K=2 {fmt([r['K2']['pk_qk_end'] for r in results])}, K=8 "
                f"{fmt([r['K8']['pk_qk_end'] for r in results])} (1/e = 0.368); "
                f"accuracy {fmt([r['K2']['acc_start'] for r in results])}"
                f" -> {fmt([r['K2']['acc_end'] for r in results])} (K=2); collapse step K=2 "
                f"{fmt([r['K2']['collapse_step'] for r in results])}, K=8 {fmt([r['K8']['collapse_step'] for r in results])}; "
                f"length {fmt([r['K2']['len_start'] for r in results])} -> {fmt([r['K2']['len_end'] for r in results])}"
                + baseline_text(results))
    return ("reproduced" if all(ok) else "not reproduced"), measured


# ----------------------------------------------------------------------------- C2, C3

def _stable_runs(ctx: Context, seed: int, objective: str, tag: str) -> dict:
    steps = ctx.steps(*STEPS)
    out = {start: summary(opd(ctx, seed, f"{tag}-{start}", start, objective, steps=steps)) for start in STABLE_STARTS}
    return {**out, "baseline": sampled_baseline(ctx, seed, STABLE_STARTS)}


STABLE_STARTS = ("teacher", "student_100")


def run_c2(ctx: Context, seed: int) -> dict:
    return _stable_runs(ctx, seed, "topk_rkl_sg", "C2-sg")


def run_c3(ctx: Context, seed: int) -> dict:
    return _stable_runs(ctx, seed, "topk_rkl_renorm", "C3-renorm")


def _stable(x: dict) -> bool:
    return x["acc_end"] >= x["acc_start"] - 0.1


def judge_c2(results: list[dict]) -> tuple[str, str]:
    ok = all(_stable(x) and x["pk_qk_end"] is not None and abs(x["pk_qk_end"] - 1) < 0.15
             for r in results for x in (r[start] for start in STABLE_STARTS))
    return ("reproduced" if ok else "not reproduced"), _stable_text(results)


def judge_c3(results: list[dict]) -> tuple[str, str]:
    ok = all(_stable(r[start]) for r in results for start in STABLE_STARTS)
    return ("reproduced" if ok else "not reproduced"), _stable_text(results)


def _stable_text(results: list[dict]) -> str:
    return "; ".join(f"from {start}: accuracy {fmt([r[start]['acc_start'] for r in results])} -> "
                     f"{fmt([r[start]['acc_end'] for r in results])}, P_K/Q_K {fmt([r[start]['pk_qk_end'] for r in results])}"
                     for start in STABLE_STARTS) + baseline_text(results)


# ----------------------------------------------------------------------------- C5

def hedge_after(s, items: list, first_tokens: list[int]) -> float:
    """Mean teacher probability of a hedge token right after `first_tokens[i]` as its first answer token."""
    import torch
    prompts = [s.teacher.renderer(it.example) for it in items]
    with torch.no_grad():
        return _hedge_probability(s, s.teacher.model(), prompts, [[t] for t in first_tokens],
                                  torch.tensor(hedge_token_ids(s.tokenizer)))


def run_c5(ctx: Context, seed: int) -> dict:
    root = ctx.testbed(seed)
    build_hedge_teacher(root, seed)
    s = build_session(load_config("distill", overrides=[
        f"model.student={root / 'student_60'}", f"model.teacher={root / 'teacher_hedge'}", f"data.train={root / 'task.jsonl'}",
        "rollout.max_new_tokens=6", f"run.out={ctx.out / 'runs' / f'C5-probe-seed{seed}'}"]))
    digit = lambda d: s.tokenizer(str(d), add_special_tokens=False)["input_ids"][0]
    right = [digit(it.example.answer) for it in s.items]
    wrong = [digit((int(it.example.answer) + 3) % 10) for it in s.items]
    rows = opd(ctx, seed, "C5-hedge", "student_60", "topk_rkl_tail", steps=ctx.steps(*STEPS), teacher="teacher_hedge",
               max_new_tokens=6)
    return {"hedge_after_wrong": hedge_after(s, s.items, wrong), "hedge_after_right": hedge_after(s, s.items, right),
            "hedge_rate_start": statistics.fmean(r["diag/hedge_rate"] for r in rows[:3]),
            "hedge_rate_end": tail_mean(rows, "diag/hedge_rate")}


def judge_c5(results: list[dict]) -> tuple[str, str]:
    ok = all(r["hedge_after_wrong"] > 0.2 and r["hedge_after_wrong"] > 5 * r["hedge_after_right"]
             and r["hedge_rate_end"] > r["hedge_rate_start"] and r["hedge_rate_end"] >= 50 for r in results)
    measured = (f"teacher P(hedge) after a wrong first digit {fmt([r['hedge_after_wrong'] for r in results])} vs after "
                f"the right one {fmt([r['hedge_after_right'] for r in results])}; student hedge rate under OPD "
                f"{fmt([r['hedge_rate_start'] for r in results])} -> {fmt([r['hedge_rate_end'] for r in results])} "
                f"per 1,000 words")
    return ("reproduced" if ok else "not reproduced"), measured


# ----------------------------------------------------------------------------- C7

def run_c7(ctx: Context, seed: int) -> dict:
    steps = ctx.steps(*STEPS)
    out = {start: summary(opd(ctx, seed, f"C7-{start}", start, "topk_rkl_tail", steps=steps))
           for start in ("init", "student_60")}
    return {**out, "baseline": sampled_baseline(ctx, seed, ("init", "student_60"))}


def judge_c7(results: list[dict]) -> tuple[str, str]:
    ok = all(r["init"]["acc_end"] - r["init"]["acc_start"] < 0.1 and
             r["student_60"]["acc_end"] - r["student_60"]["acc_start"] >= 0.2 for r in results)
    measured = "; ".join(f"{label}: accuracy {fmt([r[start]['acc_start'] for r in results])} -> "
                         f"{fmt([r[start]['acc_end'] for r in results])}"
                         for label, start in (("cold (random init)", "init"), ("SFT-warmed (60 steps)", "student_60")))
    measured += baseline_text(results)
    return ("reproduced" if ok else "not reproduced"), measured


# ----------------------------------------------------------------------------- C10

def run_c10(ctx: Context, seed: int) -> dict:
    """OPD with RKL and with FKL from the SFT-60 student, then GRPO from each result."""
    import shutil
    root, out = ctx.testbed(seed), {}
    for objective in ("rkl", "fkl"):
        rows = opd(ctx, seed, f"C10-{objective}", "student_60", objective, steps=ctx.steps(*STEPS))
        model = ctx.out / "runs" / f"C10-{objective}-seed{seed}-model"
        export_run(ctx.out / "runs" / f"C10-{objective}-seed{seed}", model)
        grpo_dir = ctx.out / "runs" / f"C10-{objective}-grpo-seed{seed}"
        shutil.rmtree(grpo_dir, ignore_errors=True)
        grpo = run(load_config("grpo", overrides=[
            f"model.student={model}", f"data.train={root / 'task.jsonl'}", f"run.out={grpo_dir}",
            f"optim.steps={ctx.steps(40, 80)}", "optim.prompts_per_step=8", "optim.micro_batch=32", "optim.lr=3e-4",
            "rollout.samples_per_prompt=4", "rollout.max_new_tokens=4", "reward.kind=numeric", "run.save_every=1000",
            "run.progress=false", "run.threads=1", "guard.enabled=false", f"run.seed={seed}"]))
        out[objective] = {"avg_at_k": tail_mean(rows, "rollout/accuracy"), "after_grpo": tail_mean(grpo, "rollout/accuracy")}
        shutil.rmtree(model, ignore_errors=True)
    return {**out, "baseline": sampled_baseline(ctx, seed, ("student_60",))}


def judge_c10(results: list[dict]) -> tuple[str, str]:
    mean = lambda obj, key: statistics.fmean(r[obj][key] for r in results)
    ok = mean("rkl", "avg_at_k") > mean("fkl", "avg_at_k") and mean("fkl", "after_grpo") >= mean("rkl", "after_grpo")
    measured = (f"after OPD, Avg@k (sampled accuracy, last 10 steps x 32 samples): RKL "
                f"{fmt([r['rkl']['avg_at_k'] for r in results])}, FKL {fmt([r['fkl']['avg_at_k'] for r in results])}; "
                f"after the GRPO stage: from RKL {fmt([r['rkl']['after_grpo'] for r in results])}, from FKL "
                f"{fmt([r['fkl']['after_grpo'] for r in results])}" + baseline_text(results))
    return ("reproduced" if ok else "not reproduced"), measured
