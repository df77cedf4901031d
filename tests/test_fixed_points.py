"""Fixed points by gradient descent on free logits, against the closed forms in MATH.md."""
from __future__ import annotations

import math

import pytest
import torch

from opdkit.lab.fixed_points import CASES, Case, descend, make_teacher, run

K, POSITIONS, VOCAB = 4, 12, 30


@pytest.fixture(scope="module")
def teacher() -> torch.Tensor:
    return make_teacher(POSITIONS, VOCAB, sharpness=2.0, seed=0)


def _final(teacher, objective, options, init="random", steps=2500):
    case = Case("t", objective, options, None, False, "", init=init)
    _, logits = descend(case, teacher, K, steps=steps, lr=0.05, seed=0)
    logp = torch.log_softmax(logits, -1)
    ids = teacher.topk(K, -1).indices
    return logp, logp.gather(-1, ids), teacher.gather(-1, ids)


def test_unnormalised_topk_converges_to_q_over_e_on_k(teacher):
    _, lp, lq = _final(teacher, "topk_rkl_unnorm", {"support": "teacher"})
    torch.testing.assert_close(lp - lq, torch.full_like(lp, -1.0), atol=2e-3, rtol=0)
    ratio = lp.logsumexp(-1).exp() / lq.logsumexp(-1).exp()
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / math.e), atol=1e-3, rtol=0)


def test_unnormalised_topk_leaves_the_teacher_it_starts_at(teacher):
    _, lp, lq = _final(teacher, "topk_rkl_unnorm", {"support": "teacher"}, init="teacher")
    torch.testing.assert_close(lp - lq, torch.full_like(lp, -1.0), atol=2e-3, rtol=0)


def test_stopgrad_topk_converges_to_q_on_k(teacher):
    _, lp, lq = _final(teacher, "topk_rkl_sg", {"support": "teacher"})
    torch.testing.assert_close(lp, lq, atol=2e-3, rtol=0)


def test_tail_bucket_converges_to_q_on_k_and_matches_tail(teacher):
    logp, lp, lq = _final(teacher, "topk_rkl_tail", {"support": "teacher"})
    torch.testing.assert_close(lp, lq, atol=2e-3, rtol=0)


def test_renormalised_topk_matches_shape_and_leaves_pk_free(teacher):
    _, lp, lq = _final(teacher, "topk_rkl_renorm", {"support": "teacher"})
    shape_p, shape_q = lp - lp.logsumexp(-1, keepdim=True), lq - lq.logsumexp(-1, keepdim=True)
    torch.testing.assert_close(shape_p, shape_q, atol=2e-3, rtol=0)
    p_k, q_k = lp.logsumexp(-1).exp(), lq.logsumexp(-1).exp()
    # From the same start stop-grad pins P_K = Q_K (tested above); renorm does not.
    assert (p_k - q_k).abs().mean() > 0.1


def test_teacher_topk_fkl_converges_to_q_over_qk(teacher):
    _, lp, lq = _final(teacher, "topk_fkl_teacher", {}, steps=4000)
    expected = lq - lq.logsumexp(-1, keepdim=True)
    torch.testing.assert_close(lp, expected, atol=1e-2, rtol=0)


def test_lab_run_reports_every_case_as_derived(tmp_path):
    rows = run(tmp_path, positions=16, vocab=40, k=4, steps=2500)
    assert [r["case"] for r in rows] == [c.label for c in CASES]
    assert all(r["verdict"] == "as derived" for r in rows), [(r["case"], r["pk_over_qk"]) for r in rows]
    assert (tmp_path / "fixed_points.json").exists() and (tmp_path / "fixed_points.png").stat().st_size > 10_000
