"""The paper's claims C1-C11 (and C12, an OPSD teacher comparison) as experiments on the tiny
testbeds, each pre-registered here before it runs: the hypothesis (setup included), the
statistics with their side and threshold (margin included), and the NULL: the same pipeline
with the effect removed, which must not pass. Seeds: quick mode 1 (a point per statistic),
full mode 5 (mean and 95% t-interval; `verdict.py` turns them into verdicts).

A threshold or setup changes only with a dated line in NOTES.md ("Issue 17 (session 4)"),
saying what changed and why; never to turn a result around.

The experiments live in claims_topk.py (C1-C3, C5, C7, C10), claims_teacher.py (C4, C6) and
claims_opsd.py (C8, C9, C11, C12); claim.py holds the record. C12 is not one of the paper's
findings: it is the frozen / live / EMA self-teacher comparison, judged against SDFT
(arXiv 2601.19897).
"""
from __future__ import annotations

from opdkit.lab.claim import Claim
from opdkit.lab.claims_opsd import describe_c8, describe_c9, describe_c11, describe_c12, run_c8, run_c9, run_c11, run_c12
from opdkit.lab.claims_teacher import C4_CUTS, describe_c4, describe_c6, run_c4, run_c6
from opdkit.lab.claims_topk import (
    c1_null,
    c3_null,
    collapse_or_end,
    describe_c1,
    describe_c2,
    describe_c3,
    describe_c5,
    describe_c7,
    describe_c10,
    gain,
    late_slope,
    run_c1,
    run_c2,
    run_c3,
    run_c5,
    run_c7,
    run_c10,
)
from opdkit.lab.verdict import Stat

FULL_SEEDS = 5


def _drop(arm: str):
    return lambda r: r[arm]["heldout_before"] - r[arm]["heldout_after"]


def _ratio(x: dict) -> float | None:
    return None if not x.get("shape_kl_start") else x["shape_kl_end"] / x["shape_kl_start"]


def _pk_gap(a: str, b: str):
    return lambda r: None if r[a]["p_k_heldout"] is None else abs(r[a]["p_k_heldout"] - r[b]["p_k_heldout"])


C1_STATS = [
    Stat("K=2 held-out accuracy drop", _drop("K2"), ">", 0.3),
    Stat("K=8 held-out accuracy drop", _drop("K8"), ">", 0.3),
    Stat("K=2 P_K/Q_K, last 10 steps", lambda r: r["K2"]["pk_qk_end"], ">", 0.2),
    Stat("K=2 P_K/Q_K, last 10 steps ", lambda r: r["K2"]["pk_qk_end"], "<", 0.55),
    Stat("K=2 held-out sampled length rise (tokens)", lambda r: r["K2"]["heldout_len_after"] - r["K2"]["heldout_len_before"],
         ">", 2),
    Stat("collapse step K=8 minus K=2", lambda r: collapse_or_end(r["K8"]) - collapse_or_end(r["K2"]), ">", 0),
]
C2_STATS = [Stat(f"{s} held-out accuracy change", gain(s), ">", -0.1) for s in ("student_60", "student_100")] + [
    Stat(f"{s} |P_K/Q_K - 1|, last 10 steps", lambda r, s=s: abs(r[s]["pk_qk_end"] - 1), "<", 0.15)
    for s in ("student_60", "student_100")]
C3_STATS = [Stat(f"{s} held-out accuracy change", gain(s), ">", -0.1) for s in ("student_100", "student_100_flat")] + [
    Stat(f"{s} renormalised top-K KL to the teacher (shape), end / start", lambda r, s=s: _ratio(r[s]), "<", 0.8)
    for s in ("student_100", "student_100_flat")] + [
    Stat("|P_K(SFT-100) - P_K(flattened)| at the end (P_K free)", _pk_gap("student_100", "student_100_flat"), ">", 0.1)]
C4_STATS = [Stat("teacher alone", lambda r: r["teacher_alone"], ">", 0.5, precondition=True)] + [
    Stat(f"teacher alone minus after the {f:.0%} cut", lambda r, f=f: r["teacher_alone"] - r[f"teacher_after_{f:g}"],
         ">", 0.1) for f in C4_CUTS] + [
    Stat("after the 25% cut minus after the 75% cut",
         lambda r: r["teacher_after_0.25"] - r["teacher_after_0.75"], ">", 0.1)]
C5_STATS = [
    Stat("teacher P(hedge) after a wrong first column", lambda r: r["hedge_after_wrong"], ">", 0.2),
    Stat("teacher P(hedge) after a wrong minus after the right first column",
         lambda r: r["hedge_after_wrong"] - r["hedge_after_right"], ">", 0.15),
    Stat("student hedge-rate rise under OPD (per 1,000 words)", lambda r: r["hedge_rate_end"] - r["hedge_rate_start"],
         ">", 20)]
C6_STATS = [
    Stat("off-format teacher's held-out greedy accuracy minus the adapted teacher's",
         lambda r: r["offformat"]["teacher_acc"] - r["grpo"]["teacher_acc"], ">", -0.05, precondition=True),
    Stat("held-out accuracy after: GRPO-adapted minus off-format teacher",
         lambda r: r["grpo"]["acc_end"] - r["offformat"]["acc_end"], ">", 0.1),
    Stat("initial top-K overlap: GRPO-adapted minus off-format", lambda r: r["grpo"]["overlap_start"]
         - r["offformat"]["overlap_start"], ">", 0.1)]
C7_STATS = [
    Stat("cold arm's training-accuracy gain over its last third (plateau)", lambda r: late_slope(r["init"]), "<", 0.05,
         precondition=True),
    Stat("cold held-out accuracy gain", gain("init"), "<", 0.1),
    Stat("warm held-out accuracy gain", gain("student_60"), ">", 0.2)]
C8_STATS = [
    Stat("held-out greedy rule rate after minus 0.8 x the teacher's", lambda r: r["rule_after"] - 0.8 * r["rule_teacher"],
         ">", 0),
    Stat("held-out sampled accuracy change", lambda r: r["acc_after"] - r["acc_before"], ">", -0.1)]
C9_STATS = [
    Stat("teacher accuracy with the key", lambda r: r["acc_teacher"], ">", 0.8, precondition=True),
    Stat("fall of KL(student || consensus) on the training items",
         lambda r: r["kl_to_consensus_before"] - r["kl_to_consensus_after"], ">", 0.1),
    Stat("that fall minus the fall of KL(student || own-key teacher)",
         lambda r: (r["kl_to_consensus_before"] - r["kl_to_consensus_after"])
         - (r["kl_to_own_teacher_before"] - r["kl_to_own_teacher_after"]), ">", 0.1),
    Stat("training-item key accuracy gain", lambda r: r["train_after"] - r["train_before"], "<", 0.2)]
C10_STATS = [
    Stat("held-out Avg@16 after OPD: RKL minus FKL", lambda r: r["rkl"]["avg_at_k"] - r["fkl"]["avg_at_k"], ">", 0.05),
    Stat("held-out accuracy after GRPO: from FKL minus from RKL",
         lambda r: r["fkl"]["after_grpo"] - r["rkl"]["after_grpo"], ">", 0.05)]
C11_STATS = [
    Stat("GRPO's training rule rate in its first 5 steps (reward reachable)", lambda r: r["grpo"]["rule_start"], ">", 0.02,
         precondition=True),
    Stat("OPSD teacher's sampled rule rate with the rule (not the ceiling)", lambda r: r["teacher_rule"], ">", 0.9,
         precondition=True),
    Stat("mean training rule rate within matched sampled tokens: OPSD minus GRPO",
         lambda r: r["self-distill"]["mean_rule_within"] - r["grpo"]["mean_rule_within"], ">", 0.1)]
C12_STATS = [
    Stat("initial teacher's sampled rule rate (follows the rule only partly)", lambda r: r["teacher_rule_start"], "<", 0.9,
         precondition=True),
    Stat("EMA minus frozen: held-out sampled rule rate after", lambda r: r["ema"]["rule_after"] - r["frozen"]["rule_after"],
         ">", 0.1),
    Stat("EMA: held-out accuracy change", lambda r: r["ema"]["acc_after"] - r["ema"]["acc_before"], ">", -0.1),
    Stat("EMA minus live: held-out accuracy after", lambda r: r["ema"]["acc_after"] - r["live"]["acc_after"], ">", 0.1)]

CLAIMS = [
    Claim("C1", "unnormalised top-K RKL trains, then collapses",
          "collapse into hedging loops; length and hedge rate up, P_K/Q_K toward 1/e, accuracy down; earlier for smaller K",
          "on the carry task (two-digit sums worked column by column, 14-22-token answers, up to 40 tokens allowed), "
          "unnormalised top-K OPD (K = 2 and 8) from a student equal to the teacher loses accuracy on 32 held-out "
          "problems, lengthens its answers and drives P_K/Q_K toward 1/e; K = 2 collapses first (hedge rate reported)",
          "sampled-token OPD (sound) from the same start, in both K slots: must not pass", C1_STATS, run_c1, describe_c1,
          c1_null, ["C1-unnorm-K2", "C1-unnorm-K8", "C1-null-sampled"]),
    Claim("C2", "stop-grad top-K RKL stays stable with P_K -> Q_K",
          "no collapse with the '+1' term removed; P_K tracks Q_K",
          "stop-grad student-top-K OPD (K = 5) from the weak SFT-60 and the SFT-100 student keeps held-out accuracy and "
          "P_K/Q_K near 1; from SFT-60 the tail and teacher-support variants run beside it (reported)",
          "the unnormalised objective (the '+1' restored) from the same starts: must fail the stability statistics "
          "(tested on constructed numbers; not run, to save CPU)", C2_STATS, run_c2, describe_c2, None,
          ["C2-sg-student_60", "C2-tail-student_60", "C2-teacher_support-student_60", "C2-sg-student_100"]),
    Claim("C3", "renormalised top-K RKL stays stable with P_K free",
          "stable training; only the shape on K is matched, P_K is free",
          "renormalised top-K OPD (K = 5) from the SFT-100 student and from the same student with its output layer "
          "scaled by 0.3 (same ranking, lower P_K): both keep accuracy and match the teacher's shape on K, and their "
          "P_K stay apart",
          "stop-grad top-K from the same two starts (pins P_K to Q_K, so P_K is not free): must not pass", C3_STATS, run_c3,
          describe_c3, c3_null, ["C3-renorm-student_100", "C3-renorm-student_100_flat"]),
    Claim("C4", "the teacher fails on the student's prefixes, more for deeper cuts",
          "teacher accuracy 62.1% alone vs 46.0% continuing student prefixes",
          "on two-digit addition written column by column with carries (~20-token answers; a Qwen2-config teacher "
          "SFT'd 1,200 steps), the teacher greedily continues 50 sampled answers of its own SFT step-300 checkpoint "
          "cut at 25/50/75% of their tokens",
          "the teacher continuing its own sampled answers cut the same way: must not drop (tested on constructed "
          "numbers; not run)", C4_STATS, run_c4, describe_c4),
    Claim("C5", "revision tokens on student prefixes; hedging rises under OPD",
          "the teacher emits 'wait'/'but' on student prefixes; hedge rate rises during OPD",
          "on the carry task, a teacher SFT'd on plain worked answers and on ones whose first column is written one "
          "too high, then 'wait' and the right result, scores student prefixes that start with a wrong column; OPD "
          "(default objective, up to 40 tokens) of the SFT step-300 student toward it",
          "the plain teacher (no revision data): P(hedge) ~ 0 and no hedging under OPD (constructed numbers)",
          C5_STATS, run_c5, describe_c5, None, ["C5-hedge"]),
    Claim("C6", "a GRPO-adapted teacher of the student's size beats a stronger off-format teacher",
          "the RLVR-adapted teacher gives better OPD; initial top-K overlap explains it",
          "OPD (default objective) of the SFT-60 student toward (a) the SFT-100 student improved by 40 GRPO steps and "
          "(b) a larger model (3 layers, hidden 96) SFT'd to answer 'the answer is N', at least as accurate (a "
          "precondition), with room for its format (16 new tokens); initial top-K overlap measured",
          "the same teacher in both arms: no gap (constructed numbers)", C6_STATS, run_c6, describe_c6, None,
          ["C6-grpo", "C6-offformat"]),
    Claim("C7", "an SFT warm start turns failing OPD into improving OPD",
          "SFT-warmed students improve under OPD where cold ones fail",
          "OPD with the default objective (topk_rkl_tail) from the random init and from the SFT-60 checkpoint, the same "
          "steps, enough for the cold arm to plateau (a precondition)",
          "two warm arms, or two cold arms: no difference (constructed numbers)", C7_STATS, run_c7, describe_c7, None,
          ["C7-init", "C7-student_60"]),
    Claim("C8", "OPSD internalises a shared rule without hurting accuracy",
          "system-prompt / style rules transfer",
          "a teacher SFT'd to end answers with '!' when 'always shout.' precedes the question; OPSD on 20 sums with "
          "that rule as the teacher's PI (the student never sees it); evaluated on the 5 held-out sums",
          "OPSD with a PI that carries no rule: the rule rate stays at 0 (constructed numbers)", C8_STATS, run_c8,
          describe_c8, None, ["C8-rule"]),
    Claim("C9", "OPSD with instance-specific PI does not help; the student lands near the consensus",
          "per-instance PI (answers) does not transfer; the student learns the PI-free consensus",
          "the PI teacher copies a key from 'the key is k.'; OPSD on items 0-19 with each item's key as PI (the student "
          "could memorise them); on those items, against the pre-OPSD state: KL to the consensus of the 10 keys falls, "
          "and more than KL to the own-key teacher; the keys are not learnt",
          "the student memorises the keys (KL to the own-key teacher falls as much; accuracy rises): must not pass "
          "(constructed numbers)", C9_STATS, run_c9, describe_c9, None, ["C9-keys"]),
    Claim("C10", "RKL gives higher Avg@k; FKL is the better start for GRPO",
          "(Decoupling) reverse KL: higher Avg@k after distillation; forward KL: a better start for RL",
          "full-vocabulary RKL and FKL OPD from the SFT-60 student, then GRPO (numeric reward, G = 4) from each result; "
          "held-out Avg@16 and accuracy, with margins of 0.05",
          "the same objective twice (RKL vs RKL): gaps ~ 0 must not pass (constructed numbers)", C10_STATS, run_c10,
          describe_c10, None, ["C10-rkl", "C10-fkl", "C10-rkl-grpo", "C10-fkl-grpo"]),
    Claim("C11", "OPSD reaches a shared rule faster than GRPO at a matched sampling budget",
          "OPSD is more sample-efficient for shared rules",
          "a PI testbed whose teacher follows the rule fully and whose student says '!' unprompted ~15% of the time "
          "(GRPO's exact-match reward on 'N!' is non-zero from the start): OPSD (16 x 1 samples, the rule as PI) "
          "vs GRPO (4 x 4), compared at the "
          "smaller run's sampled tokens",
          "GRPO against GRPO: no gap (constructed numbers)", C11_STATS, run_c11, describe_c11, None,
          ["C11-self-distill", "C11-grpo"]),
    Claim("C12", "OPSD self-teacher: frozen stagnates, live diverges, EMA is stable (SDFT)",
          "SDFT (arXiv 2601.19897): a frozen self-teacher stagnates, a live one diverges, an EMA one stays stable",
          "shared-rule OPSD on the partial PI testbed (its teacher says '!' after the rule ~60% of the time) three "
          "times: the PI-conditioned teacher is the frozen initial model, the live student, or an EMA (decay 0.99)",
          "the same teacher twice (frozen vs frozen): no gap (constructed numbers)", C12_STATS, run_c12, describe_c12,
          None, ["C12-frozen", "C12-live", "C12-ema"]),
]
