"""Top-K OPD claims: C1 (unnormalised collapse, on the carry task), C2 (stop-grad),
C3 (renormalised), C5 (hedging), C7 (SFT warm start), C10 (RKL vs FKL, then GRPO); all but C1 on the
single-digit addition testbed.

The statistics and thresholds live in `claims.py` next to each hypothesis; here are the
experiments (per seed -> numbers) and the text of their raw numbers. C1's null arm is
sampled-token OPD (`sampled_rkl`, sound) from the same start; C3's is stop-grad top-K.
"""
from __future__ import annotations

import statistics
from typing import Callable

from opdkit.analysis.probes import _hedge_probability, hedge_token_ids
from opdkit.engine.config import load_config
from opdkit.engine.export import export_run
from opdkit.engine.runner import run
from opdkit.engine.session import build_session, load_items
from opdkit.lab.carry import STUDENT_STEPS, build_carry_hedge_teacher, carry_trace, write_carry_heldout
from opdkit.lab.claim import Context, fmt, heldout_eval, opd, summary, tail_mean
from opdkit.lab.testbed import flat_student

STEPS = (120, 200)          # OPD steps (quick, full) for every run here


# ----------------------------------------------------------------------------- shared

def arms_text(results: list[dict], arms: dict[str, str]) -> str:
    """'label: held-out accuracy a -> b, P_K/Q_K r, P_K p' per arm, means over seeds."""
    col = lambda a, key: fmt([r[a].get(key) for r in results])
    return "; ".join(f"{label}: held-out accuracy {col(a, 'heldout_before')} -> {col(a, 'heldout_after')} (SE "
                     f"{col(a, 'heldout_se')}), P_K/Q_K (training, last 10 steps) {col(a, 'pk_qk_end')}, held-out P_K "
                     f"{col(a, 'p_k_heldout')}, shape KL {col(a, 'shape_kl_end')}"
                     for label, a in arms.items() if a in results[0])


def gain(arm: str) -> Callable[[dict], float]:
    """The held-out sampled accuracy change of one arm (after - before)."""
    return lambda r: r[arm]["heldout_after"] - r[arm]["heldout_before"]


# ----------------------------------------------------------------------------- C1

def run_c1(ctx: Context, seed: int) -> dict:
    """Unnormalised top-K (K = 2, 8) and its null, sampled-token OPD, from the carry-task teacher itself."""
    root = ctx.carry_testbed(seed)
    write_carry_heldout(root, seed)
    common = dict(steps=ctx.steps(*C1_STEPS), root=root, max_new_tokens=C1_MAX_TOKENS,
                  extra=("optim.prompts_per_step=16", "optim.micro_batch=16"))
    out = {f"K{k}": summary(opd(ctx, seed, f"C1-unnorm-K{k}", "teacher", "topk_rkl_unnorm", k=k, **common))
           for k in (2, 8)}
    return {**out, "null": summary(opd(ctx, seed, "C1-null-sampled", "teacher", "sampled_rkl", **common))}


C1_STEPS = (100, 160)
C1_MAX_TOKENS = 40          # the teacher's answers are 14-22 tokens: room to lengthen and to hedge


def collapse_or_end(x: dict) -> float:
    return x["collapse_step"] if x["collapse_step"] is not None else x["steps"] + 1


def describe_c1(results: list[dict]) -> str:
    return (arms_text(results, {"K=2": "K2", "K=8": "K8", "null (sampled-token OPD)": "null"})
            + f"; collapse step K=2 {fmt([r['K2']['collapse_step'] for r in results])}, K=8 "
            f"{fmt([r['K8']['collapse_step'] for r in results])}; held-out sampled length K=2 "
            f"{fmt([r['K2']['heldout_len_before'] for r in results])} -> {fmt([r['K2']['heldout_len_after'] for r in results])}"
            f", K=8 {fmt([r['K8']['heldout_len_before'] for r in results])} -> "
            f"{fmt([r['K8']['heldout_len_after'] for r in results])}; hedge rate (training, per 1,000 words) K=2 "
            f"{fmt([r['K2']['hedge_start'] for r in results])} -> {fmt([r['K2']['hedge_end'] for r in results])}")


def c1_null(r: dict) -> dict:
    return {"K2": r["null"], "K8": r["null"]}


# ----------------------------------------------------------------------------- C2, C3

C2_STARTS = ("student_60", "student_100")         # weak and medium: the objective moves from both
C2_VARIANTS = {"tail": ("topk_rkl_tail", ()), "teacher_support": ("topk_rkl_sg", ("objective.options={k: 5, support: teacher}",))}


def stopgrad_runs(ctx: Context, seed: int, start: str) -> dict:
    """Stop-grad student-top-K OPD from `start` (memoised: C2's arm and C3's null)."""
    key = ("topk_rkl_sg", seed, start)
    if key not in ctx.memo:
        ctx.memo[key] = summary(opd(ctx, seed, f"C2-sg-{start}", start, "topk_rkl_sg", steps=ctx.steps(*STEPS)))
    return ctx.memo[key]


def run_c2(ctx: Context, seed: int) -> dict:
    """Stop-grad from both starts; from the weak one also the tail and teacher-support variants."""
    out = {start: stopgrad_runs(ctx, seed, start) for start in C2_STARTS}
    for name, (objective, extra) in C2_VARIANTS.items():
        out[name] = summary(opd(ctx, seed, f"C2-{name}-student_60", "student_60", objective, steps=ctx.steps(*STEPS),
                                extra=extra))
    return out


def describe_c2(results: list[dict]) -> str:
    return arms_text(results, {"stop-grad from SFT-60": "student_60", "stop-grad from SFT-100": "student_100",
                               "tail variant from SFT-60": "tail", "teacher-support stop-grad from SFT-60": "teacher_support"})


def run_c3(ctx: Context, seed: int) -> dict:
    """Renormalised top-K from the SFT-100 student and from the same student with flattened logits
    (its lm_head scaled by FLAT: same ranking, lower P_K); the stop-grad runs from both are the null."""
    root = ctx.testbed(seed)
    flat_student(root, "student_100", FLAT)
    out = {}
    for start in ("student_100", "student_100_flat"):
        out[start] = summary(opd(ctx, seed, f"C3-renorm-{start}", start, "topk_rkl_renorm", steps=ctx.steps(*STEPS)))
        out[f"sg_{start}"] = stopgrad_runs(ctx, seed, start)
    return out


FLAT = 0.3          # lm_head scale of C3's second start (temperature ~3.3)


def shape_kl(x: dict) -> float | None:
    return x.get("shape_kl_end")


def describe_c3(results: list[dict]) -> str:
    return arms_text(results, {"renorm from SFT-100": "student_100", "renorm from SFT-100 flattened": "student_100_flat",
                               "null, stop-grad from SFT-100": "sg_student_100",
                               "null, stop-grad from SFT-100 flattened": "sg_student_100_flat"})


def c3_null(r: dict) -> dict:
    return {"student_100": r["sg_student_100"], "student_100_flat": r["sg_student_100_flat"]}


# ----------------------------------------------------------------------------- C5

def hedge_after(s, items: list, prefixes: list[str]) -> float:
    """Mean teacher probability of a hedge token right after `prefixes[i]` as the start of item i's answer."""
    import torch
    prompts = [s.teacher.renderer(it.example) for it in items]
    cuts = [s.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes]
    with torch.no_grad():
        return _hedge_probability(s, s.teacher.model(), prompts, cuts, torch.tensor(hedge_token_ids(s.tokenizer)))


def run_c5(ctx: Context, seed: int) -> dict:
    """On the carry task: the revising teacher's P(hedge) after a wrong vs the right first column, then
    OPD (default objective) of the SFT step-300 student toward it."""
    root = ctx.carry_testbed(seed)
    write_carry_heldout(root, seed)
    build_carry_hedge_teacher(root, seed)
    student = f"student_{STUDENT_STEPS[0]}"
    s = build_session(load_config("distill", overrides=[
        f"model.student={root / student}", f"model.teacher={root / 'teacher_hedge'}", f"data.train={root / 'task.jsonl'}",
        f"rollout.max_new_tokens={C1_MAX_TOKENS}", f"run.out={ctx.out / 'runs' / f'C5-probe-seed{seed}'}", "run.threads=1"]))
    items = s.items[:50]
    firsts = [carry_trace(*(int(x) for x in it.example.prompt.rstrip("=").split("+"))).split(" ")[0] for it in items]
    wrong = [f"{c.split('=')[0]}={int(c.split('=')[1]) + 1} " for c in firsts]
    rows = opd(ctx, seed, "C5-hedge", student, "topk_rkl_tail", steps=ctx.steps(*C1_STEPS), teacher="teacher_hedge",
               max_new_tokens=C1_MAX_TOKENS, root=root, extra=("optim.prompts_per_step=16", "optim.micro_batch=16")).rows
    return {"hedge_after_wrong": hedge_after(s, items, wrong),
            "hedge_after_right": hedge_after(s, items, [f + " " for f in firsts]),
            "hedge_rate_start": statistics.fmean(r["diag/hedge_rate"] for r in rows[:3]),
            "hedge_rate_end": tail_mean(rows, "diag/hedge_rate")}


def describe_c5(results: list[dict]) -> str:
    return (f"teacher P(hedge) after a wrong first column {fmt([r['hedge_after_wrong'] for r in results])} vs after "
            f"the right one {fmt([r['hedge_after_right'] for r in results])}; student hedge rate under OPD "
            f"{fmt([r['hedge_rate_start'] for r in results])} -> {fmt([r['hedge_rate_end'] for r in results])} "
            f"per 1,000 words")


# ----------------------------------------------------------------------------- C7

C7_STARTS = ("init", "student_60")


def run_c7(ctx: Context, seed: int) -> dict:
    """The default objective from the random init (cold) and the SFT-60 student (warm), same steps."""
    return {start: summary(opd(ctx, seed, f"C7-{start}", start, "topk_rkl_tail", steps=ctx.steps(*C7_STEPS)))
            for start in C7_STARTS}


C7_STEPS = (160, 300)       # long enough for the cold arm to plateau (a precondition checks it)


def late_slope(x: dict) -> float:
    """Training accuracy gained over the last third of a run (plateau: near 0)."""
    return x["acc_end"] - x["acc_two_thirds"]


def describe_c7(results: list[dict]) -> str:
    return arms_text(results, {"cold (random init)": "init", "SFT-warmed (60 steps)": "student_60"})


# ----------------------------------------------------------------------------- C10

def grpo_after(ctx: Context, seed: int, model, name: str) -> dict:
    """GRPO (numeric reward, G = 4) from `model` on the training prompts; held-out eval before/after."""
    import shutil
    root = ctx.testbed(seed)
    out = ctx.out / "runs" / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("grpo", overrides=[
        f"model.student={model}", f"data.train={root / 'task_train.jsonl'}", f"run.out={out}",
        f"optim.steps={ctx.steps(40, 80)}", "optim.prompts_per_step=8", "optim.micro_batch=32", "optim.lr=3e-4",
        "rollout.samples_per_prompt=4", "rollout.max_new_tokens=4", "reward.kind=numeric", "run.save_every=1000",
        "run.progress=false", "run.threads=1", "guard.enabled=false", f"run.seed={seed}"])
    s = build_session(cfg)
    items = load_items(cfg, str(root / "task_heldout.jsonl"), s.student_prompt)[0]
    run(cfg, session=s)
    return heldout_eval(s, items, seed=seed)


def run_c10(ctx: Context, seed: int) -> dict:
    """OPD with RKL and with FKL from the SFT-60 student, then GRPO from each result."""
    import shutil
    out = {}
    for objective in ("rkl", "fkl"):
        result = opd(ctx, seed, f"C10-{objective}", "student_60", objective, steps=ctx.steps(*STEPS))
        model = ctx.out / "runs" / f"C10-{objective}-seed{seed}-model"
        export_run(ctx.out / "runs" / f"C10-{objective}-seed{seed}", model)
        grpo = grpo_after(ctx, seed, model, f"C10-{objective}-grpo")
        out[objective] = {"avg_at_k": result.after["sampled_accuracy"], "se": result.after["sampled_se"],
                          "after_grpo": grpo["sampled_accuracy"], "after_grpo_se": grpo["sampled_se"]}
        shutil.rmtree(model, ignore_errors=True)
    return out


def describe_c10(results: list[dict]) -> str:
    return (f"held-out Avg@16 after OPD: RKL {fmt([r['rkl']['avg_at_k'] for r in results])} (SE "
            f"{fmt([r['rkl']['se'] for r in results])}), FKL {fmt([r['fkl']['avg_at_k'] for r in results])} (SE "
            f"{fmt([r['fkl']['se'] for r in results])}); after the GRPO stage: from RKL "
            f"{fmt([r['rkl']['after_grpo'] for r in results])}, from FKL {fmt([r['fkl']['after_grpo'] for r in results])}")
