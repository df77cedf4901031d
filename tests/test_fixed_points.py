"""Fixed points against the closed forms in MATH.md, two ways.

1. Gradient descent on free logits: the LR is annealed to 0 over the last 500 steps, so the last
   iterate is the settled point on any CPU (at a constant LR Adam's spikes around the fixed point
   decide the last value, which differs between AVX2, AVX-512 and ARM kernels).
2. The analytic gradient at the derived fixed point is ~0, and clearly not ~0 after a perturbation.
"""
from __future__ import annotations

import math

import pytest
import torch

from opdkit.lab.fixed_points import CASES, Case, descend, make_teacher, run
from opdkit.objectives import make_objective
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores

pytestmark = pytest.mark.numerics      # .ci/run runs these under a second kernel path too

K, POSITIONS, VOCAB = 4, 12, 30
SETTLE = 500       # final steps over which the LR anneals to 0


@pytest.fixture(scope="module")
def teacher() -> torch.Tensor:
    return make_teacher(POSITIONS, VOCAB, sharpness=2.0, seed=0)


def _final(teacher, objective, options, init="random", steps=2500):
    case = Case("t", objective, options, None, False, "", init=init)
    _, logits = descend(case, teacher, K, steps=steps, lr=0.05, seed=0, settle=SETTLE)
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


def _point_on_family(teacher, log_pk_on_support, seed=0):
    """Student log-probs (P, V) in fp64: `log_pk_on_support(lq)` on the teacher's top-K, the rest
    of the mass spread over the tail in a random shape (every fixed point below leaves it free)."""
    logq = teacher.double().log_softmax(-1)       # exactly normalised in fp64
    ids = logq.topk(K, -1).indices
    on_k = log_pk_on_support(logq.gather(-1, ids))
    tail_mass = 1.0 - on_k.logsumexp(-1, keepdim=True).exp()
    assert (tail_mass > 0.01).all()
    g = torch.Generator().manual_seed(seed)
    shape = torch.randn(logq.shape, generator=g, dtype=torch.float64).scatter(-1, ids, float("-inf"))
    logp = shape.log_softmax(-1) + tail_mass.log()
    return logp.scatter(-1, ids, on_k), ids


def _gradient(name, options, logp, teacher):
    logq = teacher.double().log_softmax(-1)       # exactly normalised in fp64
    top = logq.topk(K, -1)
    inputs = ObjectiveInputs(top.indices[:, 0], TeacherScores(logprobs=logq, topk_ids=top.indices,
                                                              topk_logprobs=top.values))
    z = logp.clone().requires_grad_()
    loss = make_objective(name, k=K, support="teacher", **options)(z, inputs).loss.sum()
    return torch.autograd.grad(loss, z)[0]


def _perturb_shape_on_support(logp, ids):
    g = torch.Generator().manual_seed(9)
    noise = 0.3 * torch.randn(ids.shape, generator=g, dtype=torch.float64)
    return (logp.scatter_add(-1, ids, noise)).log_softmax(-1)


P_K_OTHER = 0.5    # not Q_K (about 0.6-0.9 here): a point where only a P_K-free objective is at rest

DERIVED = [  # (objective, options, log p on the teacher's top-K at the derived fixed point)
    ("topk_rkl_unnorm", {}, lambda lq: lq - 1.0),                                      # p = q/e on K
    ("topk_rkl_sg", {}, lambda lq: lq),                                                # p = q on K
    ("topk_rkl_tail", {}, lambda lq: lq),                                              # p = q on K, tails equal
    ("topk_rkl_renorm", {}, lambda lq: lq - lq.logsumexp(-1, keepdim=True) + math.log(P_K_OTHER)),  # shape only
]


@pytest.mark.parametrize("name,options,on_support", DERIVED, ids=[d[0] for d in DERIVED])
def test_analytic_gradient_vanishes_at_the_derived_fixed_point_only(teacher, name, options, on_support):
    logp, ids = _point_on_family(teacher, on_support)
    at_rest = _gradient(name, options, logp, teacher)
    assert at_rest.abs().max() < 1e-9, at_rest.abs().max()
    moved = _gradient(name, options, _perturb_shape_on_support(logp, ids), teacher)
    assert moved.abs().max() > 1e-3, "the check cannot fail: a perturbed point also has zero gradient"


def test_renorm_is_at_rest_for_any_p_k_where_stop_grad_is_not(teacher):
    """P_K is free under renorm: the gradient is 0 at P_K = 0.5 != Q_K; stop-grad pulls P_K to Q_K."""
    logp, _ = _point_on_family(teacher, DERIVED[3][2])
    assert _gradient("topk_rkl_renorm", {}, logp, teacher).abs().max() < 1e-9
    assert _gradient("topk_rkl_sg", {}, logp, teacher).abs().max() > 1e-2


def test_teacher_topk_fkl_converges_to_q_over_qk(teacher):
    _, lp, lq = _final(teacher, "topk_fkl_teacher", {}, steps=4000)
    expected = lq - lq.logsumexp(-1, keepdim=True)
    torch.testing.assert_close(lp, expected, atol=1e-2, rtol=0)


def test_lab_run_reports_every_case_as_derived(tmp_path):
    rows = run(tmp_path, positions=16, vocab=40, k=4, steps=2500)
    assert [r["case"] for r in rows] == [c.label for c in CASES]
    assert all(r["verdict"] == "as derived" for r in rows), [(r["case"], r["pk_over_qk"]) for r in rows]
    assert (tmp_path / "fixed_points.json").exists() and (tmp_path / "fixed_points.png").stat().st_size > 10_000
