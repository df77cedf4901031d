"""The paper's claims C1-C11 (and C12, an OPSD teacher comparison) as experiments on the tiny testbed,
each with its hypothesis and pass threshold fixed here, before anything runs (never tuned after seeing a result).

The experiments and their judges live in claims_topk.py (C1-C3, C5, C7, C10),
claims_teacher.py (C4, C6) and claims_opsd.py (C8, C9, C11, C12); claim.py holds the record.
C12 is not one of the paper's findings: it is the issue's frozen / live / EMA self-teacher
comparison, judged against what SDFT (arXiv 2601.19897) reports.
Claims the miniature cannot test yet say so ("not run") instead of being dropped.
"""
from __future__ import annotations

from opdkit.lab.claim import Claim
from opdkit.lab.claims_opsd import judge_c8, judge_c9, judge_c11, judge_c12, run_c8, run_c9, run_c11, run_c12
from opdkit.lab.claims_teacher import judge_c4, judge_c6, run_c4, run_c6
from opdkit.lab.claims_topk import (
                                    judge_c1,
                                    judge_c2,
                                    judge_c3,
                                    judge_c5,
                                    judge_c7,
                                    judge_c10,
                                    run_c1,
                                    run_c2,
                                    run_c3,
                                    run_c5,
                                    run_c7,
                                    run_c10,
)

CLAIMS = [
    Claim("C1", "unnormalised top-K RKL trains, then collapses",
          "collapse into hedging loops; length and hedge rate up, P_K/Q_K toward 1/e, accuracy down; earlier for smaller K",
          "unnormalised top-K OPD from a student equal to the teacher (K = 2 and 8) loses accuracy, lengthens its "
          "answers and drives P_K/Q_K toward 1/e, and K = 2 collapses no later than K = 8",
          "every seed: both K reach a 3-step accuracy below half the peak; P_K/Q_K (last 10 steps) in [0.2, 0.55]; "
          "length rises; collapse step K=2 <= K=8", run_c1, judge_c1, ["C1-unnorm-K2", "C1-unnorm-K8", "sampled-teacher"]),
    Claim("C2", "stop-grad top-K RKL stays stable with P_K -> Q_K",
          "no collapse with the '+1' term removed; P_K tracks Q_K",
          "stop-grad top-K OPD (K = 5) from the teacher and from an SFT-warmed student (SFT step 100)",
          "every seed and start: final accuracy >= start - 0.1 and |P_K/Q_K - 1| < 0.15", run_c2, judge_c2,
          ["C2-sg-teacher", "C2-sg-student_100", "sampled-teacher", "sampled-student_100"]),
    Claim("C3", "renormalised top-K RKL stays stable with P_K free",
          "stable training; only the shape on K is matched",
          "renormalised top-K OPD (K = 5) from the same two starts",
          "every seed and start: final accuracy >= start - 0.1 (P_K/Q_K reported, not constrained)", run_c3, judge_c3,
          ["C3-renorm-student_100", "sampled-student_100"]),
    Claim("C4", "the teacher fails on the student's prefixes, more for deeper cuts",
          "teacher accuracy 62.1% alone vs 46.0% continuing student prefixes",
          "on two-digit addition written column by column with carries (~20-token answers; a Qwen2-config teacher "
          "SFT'd 1,200 steps), the teacher greedily continues 50 sampled answers of its own SFT step-300 checkpoint "
          "cut at 25/50/75% of their tokens",
          "teacher alone >= 0.5 (mean over seeds; else inconclusive); then mean over seeds: accuracy after every cut "
          "< alone, and non-increasing with the cut depth", run_c4, judge_c4),
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
          "first 3)", run_c7, judge_c7, ["C7-init", "C7-student_60", "sampled-init", "sampled-student_60"]),
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
    Claim("C12", "OPSD self-teacher: frozen stagnates, live diverges, EMA is stable (SDFT)",
          "SDFT (arXiv 2601.19897): a frozen self-teacher stagnates, a live one diverges, an EMA one stays stable",
          "C8's shared-rule OPSD run three times, the PI-conditioned teacher being the frozen initial model, the "
          "live student, or an EMA of the student (decay 0.99)",
          "every seed: EMA stable (rule rate after >= 0.8 x its teacher's at the start, accuracy after >= before - 0.1); "
          "live worse than EMA by >= 0.1 in accuracy or rule rate after; frozen's rule rate after <= EMA's",
          run_c12, judge_c12, ["C12-frozen", "C12-live", "C12-ema"]),
]
