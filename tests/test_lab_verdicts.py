"""Verdicts from per-seed statistics, and every claim's judge on constructed measurements: with the
effect present (5 seeds, small jitter) it says "reproduced"; with the effect removed (the claim's
null) it does not. A judge that accepts both would be a check that cannot fail."""
from __future__ import annotations

import math
import random

import pytest

from opdkit.lab.claims import CLAIMS
from opdkit.lab.verdict import Stat, interval, judge_stats, stat_verdict

BY_ID = {c.id: c for c in CLAIMS}


def verdict_of(claim_id: str, results: list[dict]) -> str:
    """The claim's verdict on `results` (its statistics and null arm; the descriptive text aside)."""
    claim = BY_ID[claim_id]
    return judge_stats(claim.stats, results, claim.null_arm)[0]


def test_interval_is_the_t_interval_of_the_mean():
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, low, high = interval(xs)
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)          # t(0.975, 4) * sample sd / sqrt(n)
    assert (mean, low, high) == pytest.approx((3.0, 3.0 - half, 3.0 + half), abs=1e-3)
    assert interval([0.7]) == (0.7, 0.7, 0.7)


def test_stat_verdict_reproduced_only_when_the_interval_clears_the_threshold():
    stat = Stat("gap", lambda r: r, ">", 0.1)
    assert stat_verdict(stat, [0.30, 0.32, 0.29, 0.31, 0.30])[0] == "reproduced"
    assert stat_verdict(stat, [0.05, 0.30, 0.00, 0.25, 0.12])[0] == "inconclusive"     # straddles 0.1
    assert stat_verdict(stat, [0.00, 0.02, -0.01, 0.01, 0.00])[0] == "not reproduced"
    assert stat_verdict(stat, [0.0, None])[0] == "not reproduced"                     # not measured
    below = Stat("drift", lambda r: r, "<", 0.15)
    assert stat_verdict(below, [0.05, 0.06, 0.04])[0] == "reproduced"
    assert stat_verdict(below, [0.50])[0] == "not reproduced"                         # one seed: the point decides
    assert "1 seed" in stat_verdict(below, [0.05])[1]


def test_judge_stats_preconditions_and_null_arm():
    tests = [Stat("effect", lambda r: r["x"], ">", 0.1)]
    setup = [Stat("setup", lambda r: r["ok"], ">", 0.5, precondition=True)]
    good = [{"x": 0.5, "ok": 1.0, "null": {"x": 0.0, "ok": 1.0}}] * 3
    assert judge_stats(tests + setup, good)[0] == "reproduced"
    assert judge_stats(tests + setup, [dict(r, ok=0.0) for r in good])[0] == "inconclusive"    # setup failed
    assert judge_stats(tests, good, null=lambda r: r["null"])[0] == "reproduced"
    passing_null = [dict(r, null={"x": 0.5}) for r in good]
    verdict, text = judge_stats(tests, passing_null, null=lambda r: r["null"])
    assert verdict == "inconclusive" and "null passes too" in text


def arm(before=0.8, after=0.8, pk_qk=1.0, p_k=0.98, shape=0.02, length=(2.0, 2.0), collapse=None,
        acc_end=0.8, acc_two_thirds=0.8):
    return {"heldout_before": before, "heldout_after": after, "pk_qk_end": pk_qk, "p_k_heldout": p_k,
            "shape_kl_start": 0.1, "shape_kl_end": shape, "heldout_len_before": length[0], "heldout_len_after": length[1],
            "collapse_step": collapse, "steps": 120,
            "acc_end": acc_end, "acc_two_thirds": acc_two_thirds}


STABLE = arm(1.0, 1.0)
C3_SG = {"sg_student_100": arm(p_k=0.95), "sg_student_100_flat": arm(p_k=0.94)}
CASES = {   # claim: (effect present, effect removed = the null)
    "C1": ({"K2": arm(1.0, 0.3, pk_qk=0.36, length=(18.0, 30.0), collapse=40),
            "K8": arm(1.0, 0.4, pk_qk=0.45, length=(18.0, 26.0), collapse=60), "null": STABLE},
           {"K2": STABLE, "K8": STABLE, "null": STABLE}),
    "C2": ({"student_60": arm(0.3, 0.6, pk_qk=1.02), "student_100": arm(0.7, 0.85, pk_qk=0.98)},
           {"student_60": arm(0.3, 0.0, pk_qk=0.4), "student_100": arm(0.7, 0.2, pk_qk=0.45)}),
    "C3": ({"student_100": arm(0.7, 0.8, p_k=0.98), "student_100_flat": arm(0.3, 0.35, p_k=0.6), **C3_SG},
           {"student_100": C3_SG["sg_student_100"], "student_100_flat": C3_SG["sg_student_100_flat"], **C3_SG}),
    "C4": ({"teacher_alone": 0.9, "teacher_after_0.25": 0.6, "teacher_after_0.5": 0.3, "teacher_after_0.75": 0.1},
           {"teacher_alone": 0.9, "teacher_after_0.25": 0.9, "teacher_after_0.5": 0.88, "teacher_after_0.75": 0.9}),
    "C5": ({"hedge_after_wrong": 0.6, "hedge_after_right": 0.01, "hedge_rate_start": 0.0, "hedge_rate_end": 120.0},
           {"hedge_after_wrong": 0.01, "hedge_after_right": 0.01, "hedge_rate_start": 0.0, "hedge_rate_end": 0.0}),
    "C6": ({"grpo": {"acc_end": 0.8, "overlap_start": 0.8, "teacher_acc": 0.9},
            "offformat": {"acc_end": 0.2, "overlap_start": 0.3, "teacher_acc": 1.0}},
           {"grpo": {"acc_end": 0.8, "overlap_start": 0.8, "teacher_acc": 0.9},
            "offformat": {"acc_end": 0.8, "overlap_start": 0.8, "teacher_acc": 0.9}}),
    "C7": ({"init": arm(0.02, 0.03, acc_end=0.02, acc_two_thirds=0.02), "student_60": arm(0.3, 0.8)},
           {"init": arm(0.02, 0.03, acc_end=0.02, acc_two_thirds=0.02), "student_60": arm(0.02, 0.03)}),
    "C8": ({"rule_before": 0.0, "rule_after": 1.0, "rule_teacher": 1.0, "acc_before": 0.95, "acc_after": 0.95},
           {"rule_before": 0.0, "rule_after": 0.0, "rule_teacher": 1.0, "acc_before": 0.95, "acc_after": 0.95}),
    "C9": ({"acc_teacher": 1.0, "kl_to_consensus_before": 2.0, "kl_to_consensus_after": 1.0,
            "kl_to_own_teacher_before": 5.0, "kl_to_own_teacher_after": 5.2, "train_before": 0.1, "train_after": 0.1},
           {"acc_teacher": 1.0, "kl_to_consensus_before": 2.0, "kl_to_consensus_after": 1.9,
            "kl_to_own_teacher_before": 5.0, "kl_to_own_teacher_after": 1.0, "train_before": 0.1, "train_after": 0.9}),
    "C10": ({"rkl": {"avg_at_k": 0.85, "after_grpo": 0.8}, "fkl": {"avg_at_k": 0.7, "after_grpo": 0.9}},
            {"rkl": {"avg_at_k": 0.8, "after_grpo": 0.85}, "fkl": {"avg_at_k": 0.8, "after_grpo": 0.85}}),
    "C11": ({"grpo": {"rule_start": 0.15, "mean_rule_within": 0.3}, "self-distill": {"mean_rule_within": 0.9},
             "teacher_rule": 1.0},
            {"grpo": {"rule_start": 0.15, "mean_rule_within": 0.5}, "self-distill": {"mean_rule_within": 0.5},
             "teacher_rule": 1.0}),
    "C12": ({"teacher_rule_start": 0.6, "frozen": {"rule_after": 0.55, "acc_before": 0.95, "acc_after": 0.95},
             "live": {"rule_after": 0.8, "acc_before": 0.95, "acc_after": 0.2},
             "ema": {"rule_after": 0.9, "acc_before": 0.95, "acc_after": 0.95}},
            {"teacher_rule_start": 0.6, "frozen": {"rule_after": 0.55, "acc_before": 0.95, "acc_after": 0.95},
             "live": {"rule_after": 0.55, "acc_before": 0.95, "acc_after": 0.95},
             "ema": {"rule_after": 0.55, "acc_before": 0.95, "acc_after": 0.95}}),
}


def jitter(value, rng: random.Random):
    """The same numbers with +-0.01 of seed noise on every float (ints and None kept)."""
    if isinstance(value, dict):
        return {k: jitter(v, rng) for k, v in value.items()}
    return value + rng.uniform(-0.01, 0.01) if isinstance(value, float) else value


def seeds(numbers: dict, n: int = 5) -> list[dict]:
    rng = random.Random(0)
    return [jitter(numbers, rng) for _ in range(n)]


def test_every_claim_has_a_case_a_null_and_statistics():
    assert set(CASES) == set(BY_ID)
    for claim in CLAIMS:
        assert claim.null and claim.stats and claim.threshold, claim.id


@pytest.mark.parametrize("claim_id", sorted(CASES, key=lambda c: int(c[1:])))
def test_judge_reproduces_the_effect_and_rejects_the_null(claim_id):
    effect, null = CASES[claim_id]
    assert verdict_of(claim_id, seeds(effect)) == "reproduced"
    assert verdict_of(claim_id, seeds(null)) != "reproduced"
    assert verdict_of(claim_id, seeds(effect, 1)) == "reproduced"        # quick mode: one seed, a point


def test_judge_is_inconclusive_when_seeds_straddle_the_margin():
    effect = CASES["C10"][0]
    spread = [dict(effect, rkl={"avg_at_k": 0.7 + gap, "after_grpo": 0.8}) for gap in (0.0, 0.2, 0.02, 0.18, 0.1)]
    assert verdict_of("C10", spread) == "inconclusive"


def test_a_failed_precondition_makes_the_claim_inconclusive():
    effect = CASES["C4"][0]
    assert verdict_of("C4", seeds(dict(effect, teacher_alone=0.4))) != "reproduced"
    no_reward = dict(CASES["C11"][0], grpo={"rule_start": 0.0, "mean_rule_within": 0.0})
    assert verdict_of("C11", seeds(no_reward)) == "inconclusive"      # GRPO could not find the rule: no test


def test_heldout_splits_are_disjoint_and_fixed_per_seed(tmp_path):
    import json

    from opdkit.lab.carry import carry_items, write_carry_heldout
    from opdkit.lab.testbed import HELDOUT, split_task, write_task
    write_task(tmp_path / "task.jsonl")
    train, held = split_task(tmp_path, seed=3)
    prompts = lambda path: [json.loads(line)["prompt"] for line in path.read_text().splitlines()]
    assert len(prompts(held)) == HELDOUT and len(prompts(train)) == 25 - HELDOUT
    assert not set(prompts(train)) & set(prompts(held))
    first = held.read_text()
    held.unlink()
    assert split_task(tmp_path, seed=3)[1].read_text() == first          # the same prompts again
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in carry_items(50, seed=1)))
    heldout = prompts(write_carry_heldout(carry, seed=1, count=20))
    assert len(heldout) == 20 and not set(heldout) & set(prompts(carry / "task.jsonl"))


def test_revised_trace_writes_a_wrong_first_column_then_wait():
    from opdkit.lab.carry import revised_trace
    from opdkit.tasks.rewards import numeric_reward
    assert revised_trace(47, 38) == "7+8=16 wait 15 4+3+1=8 = 85"
    assert numeric_reward(revised_trace(67, 58), "125") == 1.0


def test_word_clouds_at_chosen_steps(tmp_path):
    import json

    from opdkit.analysis.report import RunData, word_clouds
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 21)))
    (tmp_path / "samples.jsonl").write_text("".join(
        json.dumps({"step": s, "texts": [f"seven plus eight step{s}"]}) + "\n" for s in (1, 5, 10, 15, 20)))
    clouds = word_clouds(RunData(tmp_path), steps=[1, 11, 19])
    assert [step for step, _ in clouds] == [1, 10, 20]                  # the nearest logged steps
    assert all(uri.startswith("data:image/png;base64,") for _, uri in clouds)
