"""OPSD claims on the PI testbed: C8 (a shared rule is internalised), C9 (instance-specific PI
is not; the student lands near the consensus), C11 (OPSD vs GRPO at a matched sampling budget),
C12 (frozen vs live vs EMA self-teacher, SDFT's comparison).
"""
from __future__ import annotations

import statistics

from opdkit.analysis.probes import consensus_kls
from opdkit.engine.config import load_config
from opdkit.engine.evaluate import evaluate_session
from opdkit.engine.metrics import read_metrics
from opdkit.engine.runner import run
from opdkit.engine.session import build_session, load_items
from opdkit.lab.claim import Context, fmt, tail_mean
from opdkit.lab.testbed import RULE, opsd_overrides

# ----------------------------------------------------------------------------- C8, C9 (OPSD)

def _opsd(ctx: Context, seed: int, name: str, train: str, evaluate: str, steps: int, check: str = "",
          fixed_pi: str = "", extra: tuple[str, ...] = ()):
    """(session, before eval, after eval) of one OPSD run on the PI testbed."""
    import shutil
    out = ctx.out / "runs" / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("self-distill", overrides=opsd_overrides(ctx.pi_testbed(seed), train, evaluate, out, steps, check,
                                                               fixed_pi) + [f"run.seed={seed}", *extra])
    s = build_session(cfg)
    run(cfg, session=s)
    rows = read_metrics(out / "metrics.jsonl")
    evals = [{k[5:]: v for k, v in r.items() if k.startswith("eval/")} for r in rows if "eval/accuracy" in r]
    return s, evals[0], evals[-1]


def run_c8(ctx: Context, seed: int) -> dict:
    _, before, after = _opsd(ctx, seed, "C8-rule", "sums.jsonl", "sums.jsonl", ctx.steps(60, 100), "contains:!", RULE)
    return {"rule_before": before["rule_rate"], "rule_teacher": before["teacher_rule_rate"], "rule_after": after["rule_rate"],
            "acc_before": before["accuracy"], "acc_after": after["accuracy"]}


def judge_c8(results: list[dict]) -> tuple[str, str]:
    ok = all(r["rule_after"] >= 0.8 * r["rule_teacher"] and r["acc_after"] >= r["acc_before"] - 0.1 for r in results)
    measured = (f"rule rate {fmt([r['rule_before'] for r in results])} -> {fmt([r['rule_after'] for r in results])} "
                f"(teacher with the rule {fmt([r['rule_teacher'] for r in results])}); accuracy "
                f"{fmt([r['acc_before'] for r in results])} -> {fmt([r['acc_after'] for r in results])}")
    return ("reproduced" if ok else "not reproduced"), measured


def run_c9(ctx: Context, seed: int) -> dict:
    s, before, after = _opsd(ctx, seed, "C9-keys", "keys_train.jsonl", "keys_heldout.jsonl", ctx.steps(100, 150))
    held_out = load_items(s.cfg, s.cfg.data.eval, s.student_prompt)[0]
    kls = consensus_kls(s, held_out, [f"the key is {d}." for d in range(10)], seed=seed)
    return {"acc_before": before["accuracy"], "acc_after": after["accuracy"], "acc_teacher": before["teacher_accuracy"],
            **kls}


def judge_c9(results: list[dict]) -> tuple[str, str]:
    ok = all(r["acc_teacher"] >= 0.8 and r["acc_after"] <= r["acc_before"] + 0.2
             and r["kl_to_consensus"] < r["kl_to_own_teacher"] for r in results)
    measured = (f"held-out key accuracy {fmt([r['acc_before'] for r in results])} -> {fmt([r['acc_after'] for r in results])}"
                f" (chance 0.1; teacher with the key {fmt([r['acc_teacher'] for r in results])}); after OPSD, KL(student || "
                f"consensus of 10 keys) {fmt([r['kl_to_consensus'] for r in results])} vs KL(student || own-key teacher) "
                f"{fmt([r['kl_to_own_teacher'] for r in results])}")
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
                f"{show('grpo')} (budget {fmt([r['grpo']['budget'] for r in results])} tokens each); final rule rate "
                f"OPSD {fmt([r['self-distill']['rule_end'] for r in results])}, "
                f"GRPO {fmt([r['grpo']['rule_end'] for r in results])}")
    return ("reproduced" if ok else "not reproduced"), measured


# ----------------------------------------------------------------------------- C12 (self-teacher weights)

SELF_WEIGHTS = ("frozen", "live", "ema")


def run_c12(ctx: Context, seed: int) -> dict:
    """C8's shared-rule OPSD once per self-teacher: frozen initial weights, live weights, EMA (decay 0.99)."""
    out = {}
    for weights in SELF_WEIGHTS:
        s, before, after = _opsd(ctx, seed, f"C12-{weights}", "sums.jsonl", "sums.jsonl", ctx.steps(60, 100), "contains:!",
                                 RULE, extra=(f"teacher.self_weights={weights}",))
        teacher_end = evaluate_session(s, teacher_side=True)    # the runner scores the teacher side at step 0 only
        out[weights] = {"rule_teacher": before["teacher_rule_rate"], "rule_after": after["rule_rate"],
                        "teacher_rule_after": teacher_end["teacher_rule_rate"], "acc_before": before["accuracy"],
                        "acc_after": after["accuracy"]}
    return out


def judge_c12(results: list[dict]) -> tuple[str, str]:
    def sdft(r):
        ema, live, frozen = r["ema"], r["live"], r["frozen"]
        stable = ema["rule_after"] >= 0.8 * ema["rule_teacher"] and ema["acc_after"] >= ema["acc_before"] - 0.1
        diverges = live["acc_after"] <= ema["acc_after"] - 0.1 or live["rule_after"] <= ema["rule_after"] - 0.1
        return stable and diverges and frozen["rule_after"] <= ema["rule_after"]
    ok = all(sdft(r) for r in results)
    measured = "; ".join(f"{w}: rule rate -> {fmt([r[w]['rule_after'] for r in results])} (its teacher at the end "
                         f"{fmt([r[w]['teacher_rule_after'] for r in results])}), accuracy "
                         f"{fmt([r[w]['acc_before'] for r in results])} -> {fmt([r[w]['acc_after'] for r in results])}"
                         for w in SELF_WEIGHTS)
    return ("reproduced" if ok else "not reproduced"), measured

