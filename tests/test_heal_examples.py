"""examples/heal/warm_table.py: the chained step axis and the pre-registered verdicts of issue 18 item 4."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

HEAL = Path(__file__).resolve().parents[1] / "examples" / "heal"


@pytest.fixture(scope="module")
def warm():
    sys.path.insert(0, str(HEAL))
    try:
        yield importlib.import_module("warm_table")
    finally:
        sys.path.remove(str(HEAL))


def rows(*points):
    """Evaluation rows from (step, KL, greedy repeat ratio, sampled entropy)."""
    return [{"step": s, "teacher_kl": kl, "repeat_ratio": rep, "sample_entropy": ent} for s, kl, rep, ent in points]


def test_chained_counts_the_second_stage_from_the_end_of_the_first(warm):
    out = warm.chained([rows((0, 5, .1, 2), (10, 4, .1, 2), (20, 3, .1, 2)), rows((0, 3, .1, 2), (20, 2, .1, 2))])
    assert [r["step"] for r in out] == [0, 10, 20, 20, 40]
    assert [r["stage_step"] for r in out] == [0, 10, 20, 0, 20]
    assert warm.chained([[], rows((0, 3, .1, 2))])[0]["step"] == 0


@pytest.mark.parametrize("points, verdict", [
    (((0, 4.0, .5, 2), (20, 1.0, .3, 1), (40, 1.3, .3, 1)), "collapses"),     # rebound > 1.2 x best
    (((0, 4.0, .5, 2), (20, 1.0, .3, 1), (40, 1.1, .7, 1)), "collapses"),     # greedy loops late
    (((0, 4.0, .5, 2), (20, 1.0, .3, 1), (40, 1.0, .3, .2)), "collapses"),    # entropy gone late
    (((0, 4.0, .5, 2), (20, 3.5, .3, 1), (40, 3.4, .3, 1)), "stalls"),        # best > 0.8 x start
    (((0, 4.0, .7, 2), (20, 2.0, .3, 1), (40, 1.9, .3, 1)), "improves"),      # loops at the start do not count
])
def test_collapse_verdict_follows_the_thresholds(warm, points, verdict):
    assert warm.collapse_verdict(rows(*points), 40) == verdict


def test_fix3_verdict_needs_all_three_and_names_the_null(warm):
    alone = rows((0, 4.0, .5, 2), (40, 2.0, .5, 1))
    good = rows((0, 4.0, .5, 2), (20, 2.0, .3, 1), (40, 1.5, .3, 1))
    out = warm.fix3_verdict(alone, good, good[1:])
    assert out["holds"] and not out["null"] and out["kl_ratio_to_alone"] == pytest.approx(0.75)
    near = rows((0, 4.0, .5, 2), (40, 1.9, .3, 1))                               # ratio 0.95: the null
    assert warm.fix3_verdict(alone, near, near[1:])["null"]
    looping = rows((0, 4.0, .5, 2), (20, 1.0, .3, 1), (40, 1.1, .65, 1))         # KL fine, greedy loops
    out = warm.fix3_verdict(alone, looping, looping[1:])
    assert out["i"] and out["ii"] and not out["iii"] and not out["holds"] and out["null"]
    rebound = rows((0, 4.0, .5, 2), (20, 1.0, .3, 1), (40, 1.3, .3, 1))
    assert not warm.fix3_verdict(alone, rebound, rebound[1:])["ii"]


def test_answer_nll_is_the_token_mean_of_unpadded_per_row_scores(tiny_dir):
    """Batched with right padding == each row alone, scored by hand from the model's logits."""
    import torch

    from opdkit.models.loading import load_model
    sys.path.insert(0, str(HEAL))
    try:
        nll = importlib.import_module("teacher_answer_nll")
    finally:
        sys.path.remove(str(HEAL))
    model = load_model(str(tiny_dir / "teacher"))
    prompts, responses = [[5, 6, 7], [8], [9, 10]], [[11, 12], [13, 14, 15, 16], [17]]
    total, count = 0.0, 0
    for p, r in zip(prompts, responses):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + r])).logits[0].float(), -1)
        total -= sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(r))
        count += len(r)
    for batch in (1, 2, 3):
        assert nll.answer_nll(model, prompts, responses, pad_id=0, batch=batch) == pytest.approx(total / count, rel=1e-5)
