"""Expected gradients by exact enumeration over a small vocabulary (no sampling noise)."""
from __future__ import annotations

import pytest
import torch

from opdkit.objectives import make_objective
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores

pytestmark = pytest.mark.numerics      # .ci/run runs these under a second kernel path too

V = 7


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(V, generator=g, dtype=torch.float64) * 1.3
    logq = torch.log_softmax(torch.randn(V, generator=g, dtype=torch.float64) * 1.3, -1)
    return z, logq


def _expected_grad(z, per_sample_loss, weights):
    """sum_y weights[y] * d loss(y) / dz, every y in the vocabulary as its own row."""
    zz = z.clone().requires_grad_()
    rows = zz.expand(V, V)                                    # row y: the same logits, sampled token y
    losses = per_sample_loss(rows, torch.arange(V))
    (grad,) = torch.autograd.grad((weights.detach() * losses).sum(), zz)
    return grad


def _full_rkl_grad(z, logq):
    zz = z.clone().requires_grad_()
    inputs = ObjectiveInputs(torch.zeros(1, dtype=torch.long), TeacherScores(logprobs=logq[None]))
    loss = make_objective("rkl")(zz[None], inputs).loss
    return torch.autograd.grad(loss.sum(), zz)[0]


def test_expected_sampled_token_gradient_equals_full_rkl_gradient():
    z, logq = _setup()
    objective = make_objective("sampled_rkl")

    def per_sample(rows, ids):
        return objective(rows, ObjectiveInputs(ids, TeacherScores(sampled_logprobs=logq[ids]))).loss

    expected = _expected_grad(z, per_sample, torch.softmax(z, -1))
    torch.testing.assert_close(expected, _full_rkl_grad(z, logq), rtol=1e-10, atol=1e-12)


def test_importance_weighted_gradient_under_a_behaviour_policy_equals_full_rkl_gradient():
    z, logq = _setup(1)
    log_mu = torch.log_softmax(z + torch.randn(V, generator=torch.Generator().manual_seed(9), dtype=torch.float64), -1)
    objective = make_objective("sampled_rkl")

    def per_sample(rows, ids):
        inputs = ObjectiveInputs(ids, TeacherScores(sampled_logprobs=logq[ids]), behaviour_logprobs=log_mu[ids])
        return objective(rows, inputs).loss

    expected = _expected_grad(z, per_sample, log_mu.exp())           # y ~ mu, not p
    torch.testing.assert_close(expected, _full_rkl_grad(z, logq), rtol=1e-10, atol=1e-12)


def test_explicit_sampled_token_form_has_zero_expected_gradient():
    """d/dz (log p(y) - log q(y)) with y ~ p: E = sum_y p(y) grad log p(y) = grad 1 = 0 (MATH.md pitfall)."""
    z, logq = _setup(2)

    def explicit(rows, ids):
        return torch.log_softmax(rows, -1).gather(-1, ids[:, None]).squeeze(-1) - logq[ids]

    expected = _expected_grad(z, explicit, torch.softmax(z, -1))
    assert expected.abs().max() < 1e-12
    assert _full_rkl_grad(z, logq).abs().max() > 1e-2     # while the true gradient is not zero


def test_ppo_clip_equals_unclipped_gradient_inside_the_trust_region():
    z, logq = _setup(3)
    ids = torch.arange(V)
    log_mu = torch.log_softmax(z, -1)[ids].detach() + 0.05        # ratio exp(-0.05) inside [0.8, 1.2]
    inputs = ObjectiveInputs(ids, TeacherScores(sampled_logprobs=logq[ids]), behaviour_logprobs=log_mu)
    grads = []
    for clip in (None, 0.2):
        zz = z.clone().requires_grad_()
        loss = make_objective("sampled_rkl", clip=clip)(zz.expand(V, V), inputs).loss.sum()
        grads.append(torch.autograd.grad(loss, zz)[0])
    torch.testing.assert_close(grads[0], grads[1])


def test_ppo_clip_stops_the_gradient_outside_the_trust_region():
    z, _ = _setup(4)
    ids = torch.tensor([0])
    log_p0 = torch.log_softmax(z, -1)[0]
    inputs = ObjectiveInputs(ids, advantages=torch.tensor([1.0], dtype=torch.float64),
                             behaviour_logprobs=(log_p0 - 1.0)[None].detach())   # ratio e > 1.2, A > 0
    zz = z.clone().requires_grad_()
    loss = make_objective("grpo", clip=0.2)(zz[None], inputs).loss.sum()
    assert torch.autograd.grad(loss, zz)[0].abs().max() == 0
