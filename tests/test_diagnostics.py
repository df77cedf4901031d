"""Diagnostics on constructed inputs with hand-computed expected values."""
from __future__ import annotations

import math

import pytest
import torch

from opdkit.engine.diagnostics import (
    entropy_gap,
    hedge_rate,
    repeat_count,
    repeat_ratio,
    response_diagnostics,
    token_diagnostics,
    with_diagnostics,
)
from opdkit.objectives import make_objective
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores


def test_hedge_rate_counts_per_thousand_words():
    # 2 hedges ("wait", "Maybe") in 10 words -> 200 per 1,000
    texts = ["wait I think it is five", "Maybe six or seven"]
    assert hedge_rate(texts) == pytest.approx(200.0)
    assert hedge_rate(texts, ("think",)) == pytest.approx(100.0)
    assert hedge_rate([""]) == 0.0


def test_repeat_ratio_counts_repeated_trigrams():
    # 1 2 3 1 2 3 1: trigrams (1,2,3) (2,3,1) (3,1,2) (1,2,3)* (2,3,1)* -> 2 repeats of 7 tokens
    assert repeat_count([1, 2, 3, 1, 2, 3, 1]) == 2
    assert repeat_count([5, 5, 5, 5]) == 1            # (5,5,5) twice
    assert repeat_count([1, 2]) == 0
    assert repeat_ratio([[1, 2, 3, 1, 2, 3, 1], [4, 5, 6]]) == pytest.approx(2 / 10)


def test_response_diagnostics_length_truncation_eos():
    out = response_diagnostics([[1, 2, 3], [4, 5], [6, 7, 8]], ["a", "b", "c"], [False, True, True], max_new_tokens=3)
    assert out["length_mean"] == pytest.approx(8 / 3) and out["length_max"] == 3
    assert out["truncation"] == pytest.approx(1 / 3)     # only the row at the budget without EOS
    assert out["eos_rate"] == pytest.approx(2 / 3)


def test_token_diagnostics_hand_values():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    logq = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    inputs = ObjectiveInputs(torch.tensor([0]), TeacherScores(logprobs=logq), behaviour_logprobs=torch.tensor([math.log(0.4)]))
    d = token_diagnostics(logits, inputs)
    assert d["student_logprob"].item() == pytest.approx(math.log(0.5))
    assert d["teacher_logprob"].item() == pytest.approx(math.log(0.1))
    assert d["teacher_rank"].item() == 2                     # 0.6 and 0.3 beat 0.1
    assert d["negative_reward"].item() == 1.0                # log 0.1 - log 0.5 < 0
    assert d["sampler_gap"].item() == pytest.approx(math.log(0.4) - math.log(0.5))


def test_entropy_gap_and_the_wrapper_keep_the_objective():
    torch.manual_seed(0)
    logits, teacher = torch.randn(4, 7), torch.log_softmax(torch.randn(4, 7), -1)
    inputs = ObjectiveInputs(torch.randint(0, 7, (4,)), TeacherScores(logprobs=teacher))
    plain = make_objective("rkl")(logits, inputs)
    wrapped = with_diagnostics(make_objective("rkl"))(logits, inputs)
    assert torch.equal(plain.loss, wrapped.loss)
    gap = entropy_gap(wrapped.metrics)
    p = torch.softmax(logits, -1)
    expected = ((-(teacher.exp() * teacher).sum(-1)) - (-(p * p.log()).sum(-1))).abs()
    torch.testing.assert_close(gap, expected)


def test_overlap_advantage_hand_values():
    from opdkit.engine.diagnostics import overlap_advantage
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.1]]))
    logq = torch.log(torch.tensor([[0.2, 0.1, 0.6, 0.1]]))
    # top-2: student {0, 1}, teacher {2, 0}; overlap {0}: p~ = q~ = 1 there -> 0
    assert overlap_advantage(logp, logq, 2).item() == pytest.approx(0.0)
    # top-3: student {0, 1, 2}, teacher {2, 0, 1}: the overlap is {0, 1, 2}
    logp3 = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    logq3 = torch.log(torch.tensor([[0.2, 0.15, 0.6, 0.05]]))
    p_t = torch.tensor([0.5, 0.3, 0.15]) / 0.95
    q_t = torch.tensor([0.2, 0.15, 0.6]) / 0.95
    expected = float((p_t * (q_t.log() - p_t.log())).sum())
    assert overlap_advantage(logp3, logq3, 3).item() == pytest.approx(expected, rel=1e-5)
    assert expected < 0


def test_gap_recovery_closed_form():
    from opdkit.engine.evaluate import gap_recovery
    before = {"accuracy": 0.2, "teacher_accuracy": 0.6, "rule_rate": 0.0, "teacher_rule_rate": 0.9}
    out = gap_recovery(before, {"accuracy": 0.5, "rule_rate": 0.9})
    assert out["accuracy_gap_recovery"] == pytest.approx(0.75) and out["rule_rate_gap_recovery"] == pytest.approx(1.0)
    assert gap_recovery({"accuracy": 0.6, "teacher_accuracy": 0.5}, {"accuracy": 0.7}) == {}   # teacher no better
