"""Properties over random shapes and logits (hypothesis): non-negativity, identity, invariances."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opdkit.objectives import make_objective
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores

pytestmark = pytest.mark.numerics      # .ci/run runs these under a second kernel path too

DIVERGENCES = ["rkl", "fkl", "jsd", "jsd_norm", "kl_mix", "topk_rkl_renorm", "topk_rkl_tail"]


@st.composite
def logit_pairs(draw):
    rows, vocab = draw(st.integers(1, 6)), draw(st.integers(2, 40))
    seed, scale = draw(st.integers(0, 2**31 - 1)), draw(st.floats(0.1, 6.0))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale
    zt = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * scale
    return z, zt, draw(st.integers(1, vocab))


def _inputs(zt):
    return ObjectiveInputs(torch.zeros(zt.shape[0], dtype=torch.long), TeacherScores(logprobs=torch.log_softmax(zt, -1)))


@settings(max_examples=60, deadline=None)
@given(logit_pairs(), st.sampled_from(DIVERGENCES), st.floats(0.0, 1.0))
def test_true_divergences_are_non_negative_and_zero_only_at_identity(pair, name, mix):
    z, zt, k = pair
    options = {"beta": mix} if "jsd" in name else {"lam": mix} if name == "kl_mix" else {"k": k} if "topk" in name else {}
    objective = make_objective(name, **options)
    assert (objective(z, _inputs(zt)).loss >= -1e-12).all()
    assert objective(zt, _inputs(zt)).loss.abs().max() < 1e-10


@settings(max_examples=40, deadline=None)
@given(logit_pairs(), st.floats(-50, 50))
def test_losses_are_invariant_to_adding_a_constant_to_the_logits(pair, shift):
    z, zt, k = pair
    for name, options in (("rkl", {}), ("topk_rkl_sg", {"k": k}), ("jsd", {"beta": 0.5})):
        objective = make_objective(name, **options)
        torch.testing.assert_close(objective(z + shift, _inputs(zt)).loss, objective(z, _inputs(zt)).loss)


@settings(max_examples=40, deadline=None)
@given(logit_pairs())
def test_unnormalised_and_stopgrad_topk_have_equal_values(pair):
    """Both forms have the same value; only their gradients differ (by grad P_K)."""
    z, zt, k = pair
    a = make_objective("topk_rkl_unnorm", k=k)(z, _inputs(zt)).loss
    b = make_objective("topk_rkl_sg", k=k)(z, _inputs(zt)).loss
    torch.testing.assert_close(a, b)
