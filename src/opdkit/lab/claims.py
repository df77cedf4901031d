"""The paper's claims C1-C11 as experiments on the tiny testbed, each with its hypothesis and
pass threshold fixed here, before anything runs (never tuned after seeing a result).

An experiment runs per seed and returns numbers; `judge` turns the numbers of all seeds into
a verdict: reproduced, not reproduced, or inconclusive (e.g. the precondition did not hold).
Claims the miniature cannot test yet say so ("not run") instead of being dropped.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

INV_E = 0.36788


@dataclass
class Claim:
    id: str
    title: str
    paper: str                      # what the paper reports
    hypothesis: str                 # what we test, in the miniature
    threshold: str                  # the pass rule, in words (the code is `judge`)
    run: Callable | None = None     # (ctx, seed) -> dict of numbers
    judge: Callable | None = None   # list of per-seed dicts -> (verdict, measured text)
    figures: list = field(default_factory=list)     # run-dir names (per seed) for the report


@dataclass
class Context:
    out: Path
    quick: bool

    def testbed(self, seed: int) -> Path:
        from opdkit.lab.testbed import build_testbed
        return build_testbed(self.out / "cache" / f"testbed-seed{seed}", students=(60, 100), seed=seed)

    def pi_testbed(self, seed: int) -> Path:
        from opdkit.lab.testbed import build_pi_testbed
        return build_pi_testbed(self.out / "cache" / f"pi-testbed-seed{seed}", seed=seed)

    def steps(self, quick: int, full: int) -> int:
        return quick if self.quick else full


def smoothed(values: list[float], window: int = 3) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def collapse_step(rows: list[dict], fraction: float = 0.5) -> int | None:
    """First step where the 3-step mean of sampled accuracy falls below `fraction` x its peak."""
    acc = smoothed([r["rollout/accuracy"] for r in rows])
    peak = max(acc)
    return next((r["step"] for r, a in zip(rows, acc) if a < fraction * peak), None)


def tail_mean(rows: list[dict], key: str, n: int = 10) -> float | None:
    values = [r[key] for r in rows[-n:] if isinstance(r.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def opd(ctx: Context, seed: int, name: str, student: str, objective: str, k: int = 5, steps: int = 80,
        extra: tuple[str, ...] = (), teacher: str = "teacher", max_new_tokens: int = 4) -> list[dict]:
    """One OPD run on the seed's testbed, guard off (the claims are about unguarded dynamics)."""
    import shutil
    from opdkit.config import load_config
    from opdkit.lab.testbed import opd_overrides
    from opdkit.runner import run
    root = ctx.testbed(seed)
    out = ctx.out / "runs" / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = opd_overrides(root, student, out, objective, k=k, steps=steps, teacher=teacher,
                              max_new_tokens=max_new_tokens)
    if objective in ("rkl", "fkl"):
        overrides = [o for o in overrides if not o.startswith("objective.options")]
    return run(load_config("distill", overrides=overrides + ["guard.enabled=false", f"run.seed={seed}",
                                                             "run.sample_every=5", *extra]))


def summary(rows: list[dict]) -> dict:
    return {"acc_start": statistics.fmean(r["rollout/accuracy"] for r in rows[:3]),
            "acc_end": tail_mean(rows, "rollout/accuracy"), "pk_qk_end": tail_mean(rows, "diag/pk_qk_ratio"),
            "p_k_end": tail_mean(rows, "diag/p_k"), "len_start": statistics.fmean(r["rollout/length_mean"] for r in rows[:3]),
            "len_end": tail_mean(rows, "rollout/length_mean"), "entropy_end": tail_mean(rows, "diag/student_entropy"),
            "collapse_step": collapse_step(rows)}


def _fmt(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.fmean(xs):.3g}" + (f" +- {statistics.pstdev(xs):.2g}" if len(xs) > 1 else "")


# ----------------------------------------------------------------------------- C1

def run_c1(ctx: Context, seed: int) -> dict:
    steps = ctx.steps(120, 200)
    out = {}
    for k in (2, 8):
        out[f"K{k}"] = summary(opd(ctx, seed, f"C1-unnorm-K{k}", "teacher", "topk_rkl_unnorm", k=k, steps=steps))
    return out


def judge_c1(results: list[dict]) -> tuple[str, str]:
    ok = []
    for r in results:
        k2, k8 = r["K2"], r["K8"]
        collapsed = all(x["collapse_step"] is not None for x in (k2, k8))
        ratio_ok = all(x["pk_qk_end"] is not None and 0.2 <= x["pk_qk_end"] <= 0.55 for x in (k2, k8))
        earlier = collapsed and k2["collapse_step"] <= k8["collapse_step"]
        longer = all(x["len_end"] > x["len_start"] for x in (k2, k8))
        ok.append(collapsed and ratio_ok and earlier and longer)
    measured = (f"P_K/Q_K end K=2 {_fmt([r['K2']['pk_qk_end'] for r in results])}, K=8 "
                f"{_fmt([r['K8']['pk_qk_end'] for r in results])} (1/e = 0.368); accuracy {_fmt([r['K2']['acc_start'] for r in results])}"
                f" -> {_fmt([r['K2']['acc_end'] for r in results])} (K=2); collapse step K=2 "
                f"{_fmt([r['K2']['collapse_step'] for r in results])}, K=8 {_fmt([r['K8']['collapse_step'] for r in results])}; "
                f"length {_fmt([r['K2']['len_start'] for r in results])} -> {_fmt([r['K2']['len_end'] for r in results])}")
    return ("reproduced" if all(ok) else "not reproduced"), measured


# ----------------------------------------------------------------------------- C2, C3

def _stable_runs(ctx: Context, seed: int, objective: str, tag: str) -> dict:
    steps = ctx.steps(120, 200)
    return {start: summary(opd(ctx, seed, f"{tag}-{start}", start, objective, steps=steps))
            for start in ("teacher", "student_100")}


def run_c2(ctx: Context, seed: int) -> dict:
    return _stable_runs(ctx, seed, "topk_rkl_sg", "C2-sg")


def run_c3(ctx: Context, seed: int) -> dict:
    return _stable_runs(ctx, seed, "topk_rkl_renorm", "C3-renorm")


def _stable(x: dict) -> bool:
    return x["acc_end"] >= x["acc_start"] - 0.1


def judge_c2(results: list[dict]) -> tuple[str, str]:
    ok = all(_stable(x) and x["pk_qk_end"] is not None and abs(x["pk_qk_end"] - 1) < 0.15
             for r in results for x in r.values())
    return ("reproduced" if ok else "not reproduced"), _stable_text(results)


def judge_c3(results: list[dict]) -> tuple[str, str]:
    ok = all(_stable(x) for r in results for x in r.values())
    return ("reproduced" if ok else "not reproduced"), _stable_text(results)


def _stable_text(results: list[dict]) -> str:
    return "; ".join(f"from {start}: accuracy {_fmt([r[start]['acc_start'] for r in results])} -> "
                     f"{_fmt([r[start]['acc_end'] for r in results])}, P_K/Q_K {_fmt([r[start]['pk_qk_end'] for r in results])}"
                     for start in ("teacher", "student_100"))


# ----------------------------------------------------------------------------- C4

def run_c4(ctx: Context, seed: int) -> dict:
    from opdkit.config import load_config
    from opdkit.probes import probe_prefix
    from opdkit.session import build_session
    root = ctx.testbed(seed)
    s = build_session(load_config("distill", overrides=[
        f"model.student={root / 'init'}", f"model.teacher={root / 'teacher'}", f"data.train={root / 'task.jsonl'}",
        "rollout.max_new_tokens=4", f"run.out={ctx.out / 'runs' / f'C4-seed{seed}'}", f"run.seed={seed}"]))
    return probe_prefix(s, fractions=(0.25, 0.5, 0.75), prompts=25, seed=seed)


def judge_c4(results: list[dict]) -> tuple[str, str]:
    fr = ("0.25", "0.5", "0.75")
    mean = {f: statistics.fmean(r[f"teacher_after_{f}"] for r in results) for f in fr}
    alone = statistics.fmean(r["teacher_alone"] for r in results)
    drops = all(mean[f] < alone for f in fr)
    deeper = mean["0.75"] <= mean["0.5"] <= mean["0.25"]
    measured = f"teacher alone {alone:.2f}; after cuts at 25/50/75%: " + " / ".join(f"{mean[f]:.2f}" for f in fr)
    return ("reproduced" if drops and deeper else "not reproduced"), measured


# ----------------------------------------------------------------------------- C5

def hedge_after(s, items: list, first_tokens: list[int]) -> float:
    """Mean teacher probability of a hedge token right after `first_tokens[i]` as its first answer token."""
    from opdkit.probes import _hedge_probability, hedge_token_ids
    import torch
    prompts = [s.teacher.renderer(it.example) for it in items]
    with torch.no_grad():
        return _hedge_probability(s, s.teacher.model(), prompts, [[t] for t in first_tokens],
                                  torch.tensor(hedge_token_ids(s.tokenizer)))


def run_c5(ctx: Context, seed: int) -> dict:
    from opdkit.config import load_config
    from opdkit.lab.testbed import build_hedge_teacher
    from opdkit.session import build_session
    root = ctx.testbed(seed)
    build_hedge_teacher(root, seed)
    s = build_session(load_config("distill", overrides=[
        f"model.student={root / 'student_60'}", f"model.teacher={root / 'teacher_hedge'}", f"data.train={root / 'task.jsonl'}",
        "rollout.max_new_tokens=6", f"run.out={ctx.out / 'runs' / f'C5-probe-seed{seed}'}"]))
    digit = lambda d: s.tokenizer(str(d), add_special_tokens=False)["input_ids"][0]
    right = [digit(it.example.answer) for it in s.items]
    wrong = [digit((int(it.example.answer) + 3) % 10) for it in s.items]
    rows = opd(ctx, seed, "C5-hedge", "student_60", "topk_rkl_tail", steps=ctx.steps(120, 200), teacher="teacher_hedge",
               max_new_tokens=6)
    return {"hedge_after_wrong": hedge_after(s, s.items, wrong), "hedge_after_right": hedge_after(s, s.items, right),
            "hedge_rate_start": statistics.fmean(r["diag/hedge_rate"] for r in rows[:3]),
            "hedge_rate_end": tail_mean(rows, "diag/hedge_rate")}


def judge_c5(results: list[dict]) -> tuple[str, str]:
    ok = all(r["hedge_after_wrong"] > 0.2 and r["hedge_after_wrong"] > 5 * r["hedge_after_right"]
             and r["hedge_rate_end"] > r["hedge_rate_start"] and r["hedge_rate_end"] >= 50 for r in results)
    measured = (f"teacher P(hedge) after a wrong first digit {_fmt([r['hedge_after_wrong'] for r in results])} vs after "
                f"the right one {_fmt([r['hedge_after_right'] for r in results])}; student hedge rate under OPD "
                f"{_fmt([r['hedge_rate_start'] for r in results])} -> {_fmt([r['hedge_rate_end'] for r in results])} "
                f"per 1,000 words")
    return ("reproduced" if ok else "not reproduced"), measured


# ----------------------------------------------------------------------------- C6

def run_c6(ctx: Context, seed: int) -> dict:
    from opdkit.lab.testbed import build_c6_teachers
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
    measured = "; ".join(f"{label}: initial top-K overlap {_fmt([r[t]['overlap_start'] for r in results])}, accuracy "
                         f"{_fmt([r[t]['acc_start'] for r in results])} -> {_fmt([r[t]['acc_end'] for r in results])}"
                         for label, t in (("GRPO-adapted teacher (student size, same format)", "grpo"),
                                          ("larger off-format teacher", "offformat")))
    return ("reproduced" if ok else "not reproduced"), measured


# ----------------------------------------------------------------------------- C7

def run_c7(ctx: Context, seed: int) -> dict:
    steps = ctx.steps(120, 200)
    return {start: summary(opd(ctx, seed, f"C7-{start}", start, "topk_rkl_tail", steps=steps))
            for start in ("init", "student_60")}


def judge_c7(results: list[dict]) -> tuple[str, str]:
    ok = all(r["init"]["acc_end"] - r["init"]["acc_start"] < 0.1 and
             r["student_60"]["acc_end"] - r["student_60"]["acc_start"] >= 0.2 for r in results)
    measured = "; ".join(f"{label}: accuracy {_fmt([r[start]['acc_start'] for r in results])} -> "
                         f"{_fmt([r[start]['acc_end'] for r in results])}"
                         for label, start in (("cold (random init)", "init"), ("SFT-warmed (60 steps)", "student_60")))
    return ("reproduced" if ok else "not reproduced"), measured


# ----------------------------------------------------------------------------- C10

def run_c10(ctx: Context, seed: int) -> dict:
    """OPD with RKL and with FKL from the SFT-60 student, then GRPO from each result."""
    import shutil
    from opdkit.config import load_config
    from opdkit.export import export_run
    from opdkit.runner import run
    root, out = ctx.testbed(seed), {}
    for objective in ("rkl", "fkl"):
        rows = opd(ctx, seed, f"C10-{objective}", "student_60", objective, steps=ctx.steps(120, 200))
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
    return out


def judge_c10(results: list[dict]) -> tuple[str, str]:
    mean = lambda obj, key: statistics.fmean(r[obj][key] for r in results)
    ok = mean("rkl", "avg_at_k") > mean("fkl", "avg_at_k") and mean("fkl", "after_grpo") >= mean("rkl", "after_grpo")
    measured = (f"after OPD, Avg@k (sampled accuracy, last 10 steps x 32 samples): RKL "
                f"{_fmt([r['rkl']['avg_at_k'] for r in results])}, FKL {_fmt([r['fkl']['avg_at_k'] for r in results])}; "
                f"after the GRPO stage: from RKL {_fmt([r['rkl']['after_grpo'] for r in results])}, from FKL "
                f"{_fmt([r['fkl']['after_grpo'] for r in results])}")
    return ("reproduced" if ok else "not reproduced"), measured


# ----------------------------------------------------------------------------- C8, C9 (OPSD)

def _opsd(ctx: Context, seed: int, name: str, train: str, evaluate: str, steps: int, check: str = "",
          fixed_pi: str = ""):
    """(session, before eval, after eval) of one OPSD run on the PI testbed."""
    import shutil
    from opdkit.config import load_config
    from opdkit.lab.testbed import opsd_overrides
    from opdkit.metrics import read_metrics
    from opdkit.runner import run
    from opdkit.session import build_session
    out = ctx.out / "runs" / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("self-distill", overrides=opsd_overrides(ctx.pi_testbed(seed), train, evaluate, out, steps, check,
                                                               fixed_pi) + [f"run.seed={seed}"])
    s = build_session(cfg)
    run(cfg, session=s)
    rows = read_metrics(out / "metrics.jsonl")
    evals = [{k[5:]: v for k, v in r.items() if k.startswith("eval/")} for r in rows if "eval/accuracy" in r]
    return s, evals[0], evals[-1]


def run_c8(ctx: Context, seed: int) -> dict:
    from opdkit.lab.testbed import RULE
    _, before, after = _opsd(ctx, seed, "C8-rule", "sums.jsonl", "sums.jsonl", ctx.steps(60, 100), "contains:!", RULE)
    return {"rule_before": before["rule_rate"], "rule_teacher": before["teacher_rule_rate"], "rule_after": after["rule_rate"],
            "acc_before": before["accuracy"], "acc_after": after["accuracy"]}


def judge_c8(results: list[dict]) -> tuple[str, str]:
    ok = all(r["rule_after"] >= 0.8 * r["rule_teacher"] and r["acc_after"] >= r["acc_before"] - 0.1 for r in results)
    measured = (f"rule rate {_fmt([r['rule_before'] for r in results])} -> {_fmt([r['rule_after'] for r in results])} "
                f"(teacher with the rule {_fmt([r['rule_teacher'] for r in results])}); accuracy "
                f"{_fmt([r['acc_before'] for r in results])} -> {_fmt([r['acc_after'] for r in results])}")
    return ("reproduced" if ok else "not reproduced"), measured


def run_c9(ctx: Context, seed: int) -> dict:
    from opdkit.probes import consensus_kls
    from opdkit.session import load_items
    s, before, after = _opsd(ctx, seed, "C9-keys", "keys_train.jsonl", "keys_heldout.jsonl", ctx.steps(100, 150))
    held_out = load_items(s.cfg, s.cfg.data.eval, s.student_prompt)[0]
    kls = consensus_kls(s, held_out, [f"the key is {d}." for d in range(10)], seed=seed)
    return {"acc_before": before["accuracy"], "acc_after": after["accuracy"], "acc_teacher": before["teacher_accuracy"],
            **kls}


def judge_c9(results: list[dict]) -> tuple[str, str]:
    ok = all(r["acc_teacher"] >= 0.8 and r["acc_after"] <= r["acc_before"] + 0.2
             and r["kl_to_consensus"] < r["kl_to_own_teacher"] for r in results)
    measured = (f"held-out key accuracy {_fmt([r['acc_before'] for r in results])} -> {_fmt([r['acc_after'] for r in results])}"
                f" (chance 0.1; teacher with the key {_fmt([r['acc_teacher'] for r in results])}); after OPSD, KL(student || "
                f"consensus of 10 keys) {_fmt([r['kl_to_consensus'] for r in results])} vs KL(student || own-key teacher) "
                f"{_fmt([r['kl_to_own_teacher'] for r in results])}")
    return ("reproduced" if ok else "not reproduced"), measured


# ----------------------------------------------------------------------------- C11 (OPSD vs GRPO)

def tokens_to_reach(rows: list[dict], key: str = "rollout/rule_rate", level: float = 0.8) -> int | None:
    """Sampled tokens spent until the 3-step mean of `key` first reaches `level` (None: never)."""
    spent, values = 0, []
    for r in rows:
        spent += r["rollout/tokens"]
        values.append(r.get(key, 0.0))
        if statistics.fmean(values[-3:]) >= level:
            return spent
    return None


def run_c11(ctx: Context, seed: int) -> dict:
    import shutil
    from opdkit.config import load_config
    from opdkit.lab.testbed import RULE, opsd_overrides
    from opdkit.runner import run
    root, steps = ctx.pi_testbed(seed), ctx.steps(60, 100)
    out = {}
    for mode, extra in (("self-distill", [f"data.pi={RULE}"]),
                        ("grpo", [f"data.train={root / 'sums_rule.jsonl'}", "reward.kind=exact",
                                  "rollout.samples_per_prompt=4", "optim.prompts_per_step=4", "optim.micro_batch=16"])):
        run_dir = ctx.out / "runs" / f"C11-{mode}-seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = opsd_overrides(root, "sums.jsonl", "sums.jsonl", run_dir, steps, "contains:!") + \
            ["run.eval_every=0", f"run.seed={seed}", *extra]
        rows = run(load_config(mode, overrides=overrides))
        out[mode] = {"tokens_to_rule": tokens_to_reach(rows), "budget": sum(r["rollout/tokens"] for r in rows),
                     "rule_end": tail_mean(rows, "rollout/rule_rate", 5)}
    return out


def judge_c11(results: list[dict]) -> tuple[str, str]:
    def faster(r):
        opsd, grpo = r["self-distill"]["tokens_to_rule"], r["grpo"]["tokens_to_rule"]
        return opsd is not None and (grpo is None or opsd < grpo)
    ok = all(faster(r) for r in results)
    show = lambda mode: ", ".join("never" if r[mode]["tokens_to_rule"] is None else str(r[mode]["tokens_to_rule"])
                                  for r in results)
    measured = (f"sampled tokens until the rule rate (3-step mean) reaches 0.8: OPSD {show('self-distill')}; GRPO "
                f"{show('grpo')} (budget {_fmt([r['grpo']['budget'] for r in results])} tokens each); final rule rate "
                f"OPSD {_fmt([r['self-distill']['rule_end'] for r in results])}, GRPO {_fmt([r['grpo']['rule_end'] for r in results])}")
    return ("reproduced" if ok else "not reproduced"), measured


CLAIMS = [
    Claim("C1", "unnormalised top-K RKL trains, then collapses",
          "collapse into hedging loops; length and hedge rate up, P_K/Q_K toward 1/e, accuracy down; earlier for smaller K",
          "unnormalised top-K OPD from a student equal to the teacher (K = 2 and 8) loses accuracy, lengthens its "
          "answers and drives P_K/Q_K toward 1/e, and K = 2 collapses no later than K = 8",
          "every seed: both K reach a 3-step accuracy below half the peak; P_K/Q_K (last 10 steps) in [0.2, 0.55]; "
          "length rises; collapse step K=2 <= K=8", run_c1, judge_c1, ["C1-unnorm-K2", "C1-unnorm-K8"]),
    Claim("C2", "stop-grad top-K RKL stays stable with P_K -> Q_K",
          "no collapse with the '+1' term removed; P_K tracks Q_K",
          "stop-grad top-K OPD (K = 5) from the teacher and from an SFT-warmed student (SFT step 100)",
          "every seed and start: final accuracy >= start - 0.1 and |P_K/Q_K - 1| < 0.15", run_c2, judge_c2,
          ["C2-sg-teacher", "C2-sg-student_100"]),
    Claim("C3", "renormalised top-K RKL stays stable with P_K free",
          "stable training; only the shape on K is matched",
          "renormalised top-K OPD (K = 5) from the same two starts",
          "every seed and start: final accuracy >= start - 0.1 (P_K/Q_K reported, not constrained)", run_c3, judge_c3,
          ["C3-renorm-student_100"]),
    Claim("C4", "the teacher fails on the student's prefixes, more for deeper cuts",
          "teacher accuracy 62.1% alone vs 46.0% continuing student prefixes",
          "the testbed teacher continues an untrained student's sampled prefixes cut at 25/50/75% of their tokens",
          "mean over seeds: accuracy after every cut < alone, and non-increasing with the cut depth", run_c4, judge_c4),
    Claim("C5", "revision tokens on student prefixes; hedging rises under OPD",
          "the teacher emits 'wait'/'but' on student prefixes; hedge rate rises during OPD",
          "a teacher SFT'd on 'N' and 'W wait N' (a wrong digit, then a revision) scores prefixes that start with a "
          "wrong digit; OPD (default objective) of the SFT-60 student toward it",
          "every seed: teacher P(hedge) after a wrong first digit > 0.2 and > 5x after the right one; the student's hedge "
          "rate (per 1,000 words, last 10 steps) ends above its start and at >= 50", run_c5, judge_c5, ["C5-hedge"]),
    Claim("C6", "a GRPO-adapted teacher of the student's size beats a stronger off-format teacher",
          "the RLVR-adapted teacher gives better OPD; initial top-K overlap explains it",
          "OPD (default objective) of the SFT-60 student toward (a) the SFT-100 student improved by 40 GRPO steps and "
          "(b) a larger model (3 layers, hidden 96) SFT'd to answer 'the answer is N'",
          "mean over seeds: final sampled accuracy with (a) > with (b), and initial top-K overlap with (a) > with (b)",
          run_c6, judge_c6, ["C6-grpo", "C6-offformat"]),
    Claim("C7", "an SFT warm start turns failing OPD into improving OPD",
          "SFT-warmed students improve under OPD where cold ones fail",
          "OPD with the default objective (topk_rkl_tail) from an untrained student (the testbed's random init) "
          "and from the teacher's SFT checkpoint at step 60",
          "every seed: cold accuracy gain < 0.1 and warm accuracy gain >= 0.2 (sampled accuracy, last 10 steps vs "
          "first 3)", run_c7, judge_c7, ["C7-init", "C7-student_60"]),
    Claim("C8", "OPSD internalises a shared rule without hurting accuracy",
          "system-prompt / style rules transfer",
          "a teacher SFT'd to end answers with '!' when 'always shout.' precedes the question; OPSD on the sums with "
          "that rule as the teacher's PI, the student never sees it",
          "every seed: greedy rule rate after >= 0.8 x the PI-conditioned teacher's, accuracy after >= before - 0.1",
          run_c8, judge_c8, ["C8-rule"]),
    Claim("C9", "OPSD with instance-specific PI does not help; the student lands near the consensus",
          "per-instance PI (answers) does not transfer; the student learns the PI-free consensus",
          "the same teacher copies a key from 'the key is k.'; OPSD on items 0-19 with each item's key as PI; "
          "items 20-29 held out",
          "every seed: teacher with the key >= 0.8; held-out accuracy after <= before + 0.2 (chance 0.1); "
          "KL(student || consensus over the 10 keys) < KL(student || own-key teacher) on held-out items",
          run_c9, judge_c9, ["C9-keys"]),
    Claim("C10", "RKL gives higher Avg@k; FKL is the better start for GRPO",
          "(Decoupling) reverse KL: higher Avg@k after distillation; forward KL: a better start for RL",
          "full-vocabulary RKL and FKL OPD from the SFT-60 student, then GRPO (numeric reward, G = 4) from each result",
          "mean over seeds: Avg@k after OPD higher with RKL than with FKL, and sampled accuracy after GRPO at least as "
          "high from FKL as from RKL", run_c10, judge_c10, ["C10-rkl", "C10-fkl", "C10-rkl-grpo", "C10-fkl-grpo"]),
    Claim("C11", "OPSD reaches a shared rule faster than GRPO at a matched sampling budget",
          "OPSD is more sample-efficient for shared rules",
          "the rule task: OPSD (16 prompts x 1 sample per step, the rule as PI) vs GRPO (4 prompts x 4 samples, "
          "reward = exact match with the answer followed by '!'), same steps, so about the same sampled tokens",
          "every seed: OPSD's sampled tokens until its rule rate (3-step mean) reaches 0.8 are fewer than GRPO's "
          "(GRPO never reaching it within the budget counts as slower)", run_c11, judge_c11,
          ["C11-self-distill", "C11-grpo"]),
]
