"""The claims machinery: statistics, judges on constructed numbers, selection, and a real run."""
from __future__ import annotations

import json

import pytest

from opdkit import cli
from opdkit.lab.claim import collapse_step, smoothed
from opdkit.lab.claims import CLAIMS
from opdkit.lab.claims_teacher import judge_c4
from opdkit.lab.claims_topk import judge_c1, judge_c2
from opdkit.lab.reproduce import select


def test_smoothed_and_collapse_step():
    assert smoothed([1, 1, 0, 0]) == pytest.approx([1, 1, 2 / 3, 1 / 3])
    rows = [{"step": i + 1, "rollout/accuracy": a} for i, a in enumerate([1, 1, 1, 0.5, 0.2, 0.1])]
    # 3-step means: 1, 1, 1, .83, .57, .27 -> first below 0.5 at step 6
    assert collapse_step(rows) == 6
    assert collapse_step(rows[:4]) is None


def _c1(pk2=0.35, pk8=0.45, c2=40, c8=60, grows=True):
    def one(pk, c):
        return {"collapse_step": c, "pk_qk_end": pk, "len_start": 2.0, "len_end": 3.0 if grows else 2.0,
                "acc_start": 1.0, "acc_end": 0.4}
    return {"K2": one(pk2, c2), "K8": one(pk8, c8)}


def test_judge_c1_each_condition_can_fail():
    assert judge_c1([_c1()])[0] == "reproduced"
    assert judge_c1([_c1(pk2=0.9)])[0] == "not reproduced"          # P_K/Q_K far from 1/e
    assert judge_c1([_c1(c2=70)])[0] == "not reproduced"            # smaller K collapsed later
    assert judge_c1([_c1(c8=None)])[0] == "not reproduced"          # no collapse
    assert judge_c1([_c1(grows=False)])[0] == "not reproduced"      # length did not rise
    assert judge_c1([_c1(), _c1(pk8=0.1)])[0] == "not reproduced"   # every seed must pass


def test_judge_c2_and_c4():
    stable = {"acc_start": 0.9, "acc_end": 0.85, "pk_qk_end": 1.05}
    assert judge_c2([{"teacher": stable, "student_100": stable}])[0] == "reproduced"
    drifted = dict(stable, pk_qk_end=0.7)
    assert judge_c2([{"teacher": stable, "student_100": drifted}])[0] == "not reproduced"
    r = {"teacher_alone": 1.0, "teacher_after_0.25": 0.6, "teacher_after_0.5": 0.4, "teacher_after_0.75": 0.4}
    assert judge_c4([r])[0] == "reproduced"
    assert judge_c4([dict(r, **{"teacher_after_0.75": 0.5})])[0] == "not reproduced"
    assert judge_c4([dict(r, teacher_alone=0.4, **{"teacher_after_0.25": 0.3})])[0] == "inconclusive"


def test_select_claims():
    assert [c.id for c in select("c1, C4")] == ["C1", "C4"]
    assert len(select(None)) == 12 == len(CLAIMS)
    with pytest.raises(ValueError, match="unknown claims"):
        select("C13")


def test_reproduce_writes_table_json_and_report_with_probe_bars(tmp_path, capsys, monkeypatch):
    """The machinery on a claim whose experiment returns fixed numbers: the real C4 judge, table, JSON, bars."""
    from opdkit.lab import reproduce as lab
    from opdkit.lab.claim import Claim
    c4 = next(c for c in CLAIMS if c.id == "C4")
    numbers = {"teacher_alone": 0.8, "teacher_after_0.25": 0.6, "teacher_after_0.5": 0.3, "teacher_after_0.75": 0.1}
    fake = Claim("C4", c4.title, c4.paper, c4.hypothesis, c4.threshold, lambda ctx, seed: numbers, c4.judge)
    monkeypatch.setattr(lab, "select", lambda only: [fake])
    assert cli.main(["lab", "reproduce", "--quick", "--only", "C4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "C4" in out and "measured" in out and "0.8" in out
    data = json.loads((tmp_path / "claims.json").read_text())
    assert [c["claim"] for c in data["claims"]] == ["C4"]
    assert data["claims"][0]["verdict"] == "reproduced"
    page = (tmp_path / "report.html").read_text()
    assert "Claims" in page and "C4: teacher accuracy continuing student prefixes" in page
    assert page.count("data:image/png;base64,") == 1


@pytest.mark.slow
def test_reproduce_c4_for_real(tmp_path):
    from opdkit.lab.reproduce import reproduce
    rows = reproduce(tmp_path, quick=True, only="C4")
    assert rows[0]["verdict"] in ("reproduced", "not reproduced", "inconclusive")
    raw = json.loads((tmp_path / "claims.json").read_text())["raw"]["C4"][0]
    assert 0 <= raw["teacher_alone"] <= 1 and "teacher_after_0.75" in raw


@pytest.mark.slow
def test_reproduce_quick_covers_every_claim(tmp_path):
    from opdkit.lab.reproduce import reproduce
    rows = reproduce(tmp_path, quick=True)
    assert [r["claim"] for r in rows] == [f"C{i}" for i in range(1, 13)]
    assert all(r["verdict"] in ("reproduced", "not reproduced", "inconclusive", "not run") for r in rows)
    assert (tmp_path / "report.html").is_file()


def test_judges_c8_c9_c11_and_tokens_to_reach():
    from opdkit.lab.claims_opsd import judge_c8, judge_c9, judge_c11, tokens_to_reach
    c8 = {"rule_before": 0.0, "rule_teacher": 1.0, "rule_after": 0.9, "acc_before": 1.0, "acc_after": 0.95}
    assert judge_c8([c8])[0] == "reproduced"
    assert judge_c8([dict(c8, rule_after=0.7)])[0] == "not reproduced"
    assert judge_c8([dict(c8, acc_after=0.8)])[0] == "not reproduced"
    c9 = {"acc_before": 0.1, "acc_after": 0.2, "acc_teacher": 1.0, "kl_to_consensus": 0.9, "kl_to_own_teacher": 4.7}
    assert judge_c9([c9])[0] == "reproduced"
    assert judge_c9([dict(c9, acc_after=0.5)])[0] == "not reproduced"           # held-out keys were learned
    assert judge_c9([dict(c9, kl_to_consensus=5.0)])[0] == "not reproduced"
    rows = [{"rollout/tokens": 10, "rollout/rule_rate": v} for v in (0.0, 0.5, 1.0, 1.0, 1.0)]
    # 3-step means: 0, .25, .5, .83 -> reached after 4 steps = 40 tokens
    assert tokens_to_reach(rows) == 40
    assert tokens_to_reach(rows[:3]) is None
    race = lambda o, g: {"self-distill": {"tokens_to_rule": o, "budget": 100, "rule_end": 1.0},
                         "grpo": {"tokens_to_rule": g, "budget": 100, "rule_end": 0.0}}
    assert judge_c11([race(30, None)])[0] == "reproduced"
    assert judge_c11([race(30, 20)])[0] == "not reproduced"
    assert judge_c11([race(None, None)])[0] == "not reproduced"


def test_judge_c7():
    from opdkit.lab.claims_topk import judge_c7
    r = {"init": {"acc_start": 0.02, "acc_end": 0.05}, "student_60": {"acc_start": 0.35, "acc_end": 0.77}}
    assert judge_c7([r])[0] == "reproduced"
    assert judge_c7([dict(r, init={"acc_start": 0.02, "acc_end": 0.3})])[0] == "not reproduced"     # cold improved
    assert judge_c7([dict(r, student_60={"acc_start": 0.35, "acc_end": 0.4})])[0] == "not reproduced"


def test_judge_c10():
    from opdkit.lab.claims_topk import judge_c10
    r = {"rkl": {"avg_at_k": 0.8, "after_grpo": 0.85}, "fkl": {"avg_at_k": 0.7, "after_grpo": 0.9}}
    assert judge_c10([r])[0] == "reproduced"
    assert judge_c10([dict(r, fkl={"avg_at_k": 0.85, "after_grpo": 0.9})])[0] == "not reproduced"
    assert judge_c10([dict(r, fkl={"avg_at_k": 0.7, "after_grpo": 0.8})])[0] == "not reproduced"


def test_judge_c6():
    from opdkit.lab.claims_teacher import judge_c6
    r = {"grpo": {"overlap_start": 0.8, "acc_start": 0.3, "acc_end": 0.8},
         "offformat": {"overlap_start": 0.3, "acc_start": 0.3, "acc_end": 0.5}}
    assert judge_c6([r])[0] == "reproduced"
    assert judge_c6([dict(r, offformat=dict(r["offformat"], acc_end=0.9))])[0] == "not reproduced"
    assert judge_c6([dict(r, offformat=dict(r["offformat"], overlap_start=0.9))])[0] == "not reproduced"


def test_judge_c5():
    from opdkit.lab.claims_topk import judge_c5
    r = {"hedge_after_wrong": 0.6, "hedge_after_right": 0.01, "hedge_rate_start": 10.0, "hedge_rate_end": 120.0}
    assert judge_c5([r])[0] == "reproduced"
    assert judge_c5([dict(r, hedge_after_right=0.2)])[0] == "not reproduced"
    assert judge_c5([dict(r, hedge_rate_end=5.0)])[0] == "not reproduced"


def test_judge_c12():
    from opdkit.lab.claims_opsd import judge_c12
    one = lambda rule, acc: {"rule_teacher": 1.0, "rule_after": rule, "teacher_rule_after": 1.0, "acc_before": 1.0,
                             "acc_after": acc}
    r = {"frozen": one(0.9, 1.0), "live": one(0.5, 1.0), "ema": one(1.0, 1.0)}
    assert judge_c12([r])[0] == "reproduced"
    assert judge_c12([dict(r, live=one(1.0, 0.95))])[0] == "not reproduced"      # live did not diverge
    assert judge_c12([dict(r, ema=one(0.7, 1.0))])[0] == "not reproduced"        # EMA did not internalise the rule
    assert judge_c12([dict(r, frozen=one(1.0, 1.0), ema=one(0.95, 1.0))])[0] == "not reproduced"  # frozen beat EMA


def test_sampled_baseline_runs_once_per_seed_and_start(tmp_path, monkeypatch):
    from opdkit.lab import claims_topk
    from opdkit.lab.claim import Context
    calls = []
    row = {"step": 1, "rollout/accuracy": 0.5, "rollout/length_mean": 2.0}
    monkeypatch.setattr(claims_topk, "opd", lambda ctx, seed, name, start, objective, steps: calls.append(
        (name, objective)) or [row] * 3)
    ctx = Context(tmp_path, quick=True)
    claims_topk.sampled_baseline(ctx, 0, ("teacher", "student_100"))
    claims_topk.sampled_baseline(ctx, 0, ("teacher",))
    claims_topk.sampled_baseline(ctx, 1, ("teacher",))
    assert calls == [("sampled-teacher", "sampled_rkl"), ("sampled-student_100", "sampled_rkl"),
                     ("sampled-teacher", "sampled_rkl")]
    text = claims_topk.baseline_text([{"baseline": {"teacher": {"acc_start": 0.5, "acc_end": 0.25}}}])
    assert text == "; sampled-token OPD baseline from teacher: accuracy 0.5 -> 0.25"
