"""Objectives fed by a teacher that gave only its top-k scores (a served teacher), at the edges.

- An empty support (support=intersection, student and teacher top-K disjoint) is the one-outcome
  coarsening {tail}: P_tail = Q_tail = 1, so every top-K RKL, the tail bucket included, has loss 0
  and gradient 0 there, exactly as with a local teacher's full log-probs. The row stays in the
  token mean (objectives return per-token losses; reduction counts response positions).
- sampled_rkl needs only log q of the sampled token: a teacher that returned fewer top-k entries
  than diagnostic_k must not be refused; the diagnostics use what it returned.
"""
from __future__ import annotations

import pytest
import torch
from conftest import full_inputs

from opdkit.objectives import make_objective
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores

pytestmark = pytest.mark.numerics      # .ci/run runs these under a second kernel path too

V, K = 12, 4


def _disjoint_rows():
    """Row 0: student top-4 = {0..3}, teacher top-4 = {6..9} (empty intersection); rows 1-2 overlap."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, V, generator=g, dtype=torch.float64)
    zt = z + 0.7 * torch.randn(3, V, generator=g, dtype=torch.float64)    # rows 1-2 share most of top-4
    z[0, :4] += 6.0
    zt[0, 6:10] += 6.0
    ids = torch.tensor([7, 2, 5])
    return z.requires_grad_(), zt, ids


def _served(local: ObjectiveInputs) -> ObjectiveInputs:
    t = local.teacher
    return ObjectiveInputs(local.ids, TeacherScores(topk_ids=t.topk_ids, topk_logprobs=t.topk_logprobs,
                                                    sampled_logprobs=t.sampled_logprobs))


@pytest.mark.parametrize("name,options", [("topk_rkl_tail", {}), ("topk_rkl", {"norm": "tail"}),
                                          ("topk_rkl", {"norm": "none"}), ("topk_rkl", {"norm": "stopgrad"}),
                                          ("topk_rkl", {"norm": "renorm"})])
def test_empty_intersection_has_zero_loss_and_gradient_with_a_topk_only_teacher(name, options):
    z, zt, ids = _disjoint_rows()
    local = full_inputs(zt, ids, k=K)
    objective = make_objective(name, k=K, support="intersection", **options)
    out = objective(z, _served(local))
    assert out.metrics["support_size"][0] == 0, "row 0 must have an empty support for this test to mean anything"
    assert abs(out.loss[0].item()) < 1e-12          # was 16.1 = -log 1e-7 before the fix
    grad = torch.autograd.grad(out.loss.sum(), z)[0]
    torch.testing.assert_close(grad[0], torch.zeros(V, dtype=torch.float64), atol=1e-12, rtol=0)
    # and the top-k-only teacher agrees with the full log-probs on every row, empty or not
    reference = objective(z, local).loss
    torch.testing.assert_close(out.loss, reference)
    torch.testing.assert_close(grad, torch.autograd.grad(reference.sum(), z)[0])
    assert (out.metrics["support_size"][1:] >= 2).all() and (out.loss[1:].abs() > 1e-6).all(), \
        "the non-empty rows must keep their loss"


def test_sampled_rkl_accepts_a_teacher_with_fewer_topk_entries_than_diagnostic_k():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(5, V, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(5, V, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (5,), generator=g)
    local = full_inputs(zt, ids, k=3)
    objective = make_objective("sampled_rkl", diagnostic_k=8)       # more than the 3 the teacher returned
    served, reference = objective(z, _served(local)), objective(z, local)
    torch.testing.assert_close(served.loss, reference.loss)
    torch.testing.assert_close(torch.autograd.grad(served.loss.sum(), z)[0],
                               torch.autograd.grad(reference.loss.sum(), z)[0])
    # diagnostics over the top-3 it returned: the overlap of the student's top-3 with it
    student_top = z.detach().topk(3, -1).indices
    shared = (student_top.unsqueeze(-1) == local.teacher.topk_ids.unsqueeze(-2)).any(-1).double().mean(-1)
    torch.testing.assert_close(served.metrics["overlap"], shared, check_dtype=False)


def test_a_topk_loss_still_refuses_a_support_larger_than_the_teacher_returned():
    z, zt, ids = _disjoint_rows()
    served = _served(full_inputs(zt, ids, k=3))
    with pytest.raises(ValueError, match="returned only its top-3"):
        make_objective("topk_rkl_tail", k=K, support="teacher")(z, served)
