"""The claims machinery: statistics, judges on constructed numbers, selection, and a real run."""
from __future__ import annotations

import json

import pytest

from opdkit import cli
from opdkit.lab.claim import collapse_step, smoothed
from opdkit.lab.claims import CLAIMS
from opdkit.lab.reproduce import select


def test_smoothed_and_collapse_step():
    assert smoothed([1, 1, 0, 0]) == pytest.approx([1, 1, 2 / 3, 1 / 3])
    rows = [{"step": i + 1, "rollout/accuracy": a} for i, a in enumerate([1, 1, 1, 0.5, 0.2, 0.1])]
    # 3-step means: 1, 1, 1, .83, .57, .27 -> first below 0.5 at step 6
    assert collapse_step(rows) == 6
    assert collapse_step(rows[:4]) is None


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
    fake = Claim("C4", c4.title, c4.paper, c4.hypothesis, c4.null, c4.stats, lambda ctx, seed: numbers, c4.describe)
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


def test_tokens_to_reach_and_rate_at_tokens():
    from opdkit.lab.claims_opsd import mean_rate_within, rate_at_tokens, tokens_to_reach
    rows = [{"rollout/tokens": 10, "rollout/rule_rate": v} for v in (0.0, 0.5, 1.0, 1.0, 1.0)]
    # 3-step means: 0, .25, .5, .83 -> reached after 4 steps = 40 tokens
    assert tokens_to_reach(rows) == 40
    assert tokens_to_reach(rows[:3]) is None
    assert rate_at_tokens(rows, 30) == pytest.approx(0.5)          # steps 1-3 fit in 30 tokens
    assert rate_at_tokens(rows, 35) == pytest.approx(0.5)
    assert rate_at_tokens(rows, 5) == 0.0
    assert mean_rate_within(rows, 30) == pytest.approx(0.5)        # (0 + .5 + 1) / 3
    fast = [{"rollout/tokens": 10, "rollout/rule_rate": v} for v in (1.0, 1.0, 1.0)]
    assert mean_rate_within(fast, 30) > mean_rate_within(rows, 30)  # both end at 1; the faster one scores higher
