"""Gradients of every objective: finite differences, the '+1' identity, zero at p = q."""
from __future__ import annotations

import pytest
import torch
from conftest import full_inputs

from opdkit.objectives import OBJECTIVES, make_objective
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores

pytestmark = pytest.mark.numerics      # .ci/run runs these under a second kernel path too

V = 12
# Options that keep every top-K support a proper subset of the small test vocabulary.
SMALL_K = {"topk_rkl": {"k": 4}, "topk_rkl_unnorm": {"k": 4}, "topk_rkl_sg": {"k": 4},
           "topk_rkl_renorm": {"k": 4}, "topk_rkl_tail": {"k": 4}, "topk_fkl_teacher": {"k": 4}, "shared_topk": {"k": 4}}
VARIANTS = [(name, SMALL_K.get(name, {})) for name in OBJECTIVES] + [
    ("jsd", {"beta": 0.3}), ("jsd_norm", {"beta": 0.0}), ("jsd_norm", {"beta": 1.0}), ("jsd_norm", {"beta": 0.7}),
    ("kl_mix", {"lam": 0.25}),
    ("topk_rkl", {"k": 3, "support": "union", "norm": "none", "include_sampled": True}),
    ("topk_rkl", {"k": 6, "support": "intersection", "norm": "renorm"}),
    ("topk_rkl", {"k": 6, "support": "intersection", "norm": "tail"}),
    ("topk_rkl", {"k": 3, "support": "teacher", "norm": "tail", "include_sampled": True}),
    ("sampled_rkl", {"clip": 0.2}), ("grpo", {"clip": None}),
]


def _inputs(z_teacher, ids, with_behaviour):
    g = torch.Generator().manual_seed(7)
    extra = {"advantages": torch.randn(ids.shape, generator=g, dtype=torch.float64)}
    if with_behaviour:
        extra["behaviour_logprobs"] = torch.log(torch.rand(ids.shape, generator=g, dtype=torch.float64) * 0.5 + 0.05)
    return full_inputs(z_teacher, ids, k=6, **extra)


def finite_difference_grad(f, z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of a scalar function, element by element (fp64)."""
    grad = torch.zeros_like(z)
    flat, out = z.detach().clone().view(-1), grad.view(-1)
    for i in range(flat.numel()):
        orig = flat[i].item()
        flat[i] = orig + eps
        hi = float(f(flat.view_as(z)))
        flat[i] = orig - eps
        lo = float(f(flat.view_as(z)))
        flat[i] = orig
        out[i] = (hi - lo) / (2 * eps)
    return grad


def frozen_surrogate(name, options, z0, inputs):
    """The function whose ordinary derivative the objective's gradient must equal.

    Objectives with a stop-gradient are not differentiable as written: their gradient is
    that of the same formula with the stopped quantity frozen at z0. Others are their own.
    """
    objective = make_objective(name, **options)
    norm = options.get("norm", OBJECTIVES[name].options.get("norm", "stopgrad"))
    if name in ("sampled_rkl", "chunk_rkl"):       # chunk_rkl with one tokenizer: each token its own chunk
        from opdkit.objectives import policy_gradient_loss
        lp_y = lambda z: torch.log_softmax(z, -1).gather(-1, inputs.ids[:, None]).squeeze(-1)  # noqa: E731
        reward0 = inputs.teacher.sampled_logprobs - lp_y(z0)
        return lambda z: policy_gradient_loss(lp_y(z), reward0, inputs.behaviour_logprobs, options.get("clip")).sum()
    if name.startswith("topk_rkl") and norm == "stopgrad":
        k, support = options.get("k", 20), options.get("support", "student")
        ids = (z0 if support == "student" else inputs.teacher.logprobs).topk(k, -1).indices
        weight0 = (torch.log_softmax(z0, -1) - inputs.teacher.logprobs).gather(-1, ids)
        return lambda z: (torch.softmax(z, -1).gather(-1, ids) * weight0).sum()
    return lambda z: objective(z, inputs).loss.sum()


@pytest.mark.parametrize("name,options", VARIANTS, ids=[f"{n}{o}" for n, o in VARIANTS])
@pytest.mark.parametrize("with_behaviour", [False, True])
def test_gradient_matches_finite_differences(name, options, with_behaviour):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, V, generator=g, dtype=torch.float64) * 1.5
    zt = torch.randn(3, V, generator=g, dtype=torch.float64) * 1.5
    ids = torch.randint(0, V, (3,), generator=g)
    inputs = _inputs(zt, ids, with_behaviour)
    zg = z.clone().requires_grad_()
    (analytic,) = torch.autograd.grad(make_objective(name, **options)(zg, inputs).loss.sum(), zg)
    numeric = finite_difference_grad(frozen_surrogate(name, options, z, inputs), z)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-7)
    assert analytic.abs().max() > 1e-4          # a zero gradient would pass vacuously


def test_unnormalised_minus_stopgrad_gradient_is_grad_pk():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, V, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(4, V, generator=g, dtype=torch.float64)
    inputs = full_inputs(zt, torch.zeros(4, dtype=torch.long))
    grads = {}
    for norm in ("none", "stopgrad"):
        loss = make_objective("topk_rkl", k=4, norm=norm, support="teacher")(z, inputs).loss.sum()
        (grads[norm],) = torch.autograd.grad(loss, z)
    support = zt.topk(4, -1).indices
    p_k = torch.softmax(z, -1).gather(-1, support).sum()
    (grad_pk,) = torch.autograd.grad(p_k, z)
    torch.testing.assert_close(grads["none"] - grads["stopgrad"], grad_pk, rtol=1e-10, atol=1e-12)


def test_plus_one_term_moves_logits_at_p_equal_q():
    """In logits the '+1' lowers every logit in K by p_j (1 - P_K) per unit step, tail up."""
    g = torch.Generator().manual_seed(2)
    zt = torch.randn(V, generator=g, dtype=torch.float64)
    z = zt.clone().requires_grad_()
    support = zt.topk(4).indices
    objective = make_objective("topk_rkl_unnorm", k=4, support="teacher")
    loss = objective(z[None], full_inputs(zt[None], torch.zeros(1, dtype=torch.long))).loss.sum()
    (grad,) = torch.autograd.grad(loss, z)
    p = torch.softmax(zt, -1)
    in_k = torch.zeros(V, dtype=torch.bool)
    in_k[support] = True
    p_k = p[in_k].sum()
    expected = torch.where(in_k, p * (1 - p_k), -p * p_k)     # d P_K / dz_j
    torch.testing.assert_close(grad, expected)
    assert (grad[in_k] > 0).all() and (grad[~in_k] < 0).all()   # descent: K down, tail up


@pytest.mark.parametrize("name", [n for n, s in OBJECTIVES.items() if s.sound is not None])
def test_student_equal_teacher_gives_zero_loss_and_gradient_unless_biased(name):
    g = torch.Generator().manual_seed(3)
    zt = torch.randn(5, V, generator=g, dtype=torch.float64) * 2
    z = zt.clone().requires_grad_()
    ids = torch.randint(0, V, (5,), generator=g)
    out = make_objective(name, **SMALL_K.get(name, {}))(z, full_inputs(zt, ids, k=6))
    (grad,) = torch.autograd.grad(out.loss.sum(), z)
    if OBJECTIVES[name].sound:
        assert out.loss.abs().max() < 1e-12
        assert grad.abs().max() < 1e-12
    else:
        assert grad.abs().max() > 1e-3, f"{name} is biased: it must move away from p = q"


def test_topk_over_whole_vocabulary_equals_full_rkl():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(3, V, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, V, generator=g, dtype=torch.float64)
    inputs = full_inputs(zt, torch.zeros(3, dtype=torch.long))
    full = make_objective("rkl")(z, inputs).loss
    for norm in ("none", "stopgrad", "renorm", "tail"):
        loss = make_objective("topk_rkl", k=V, norm=norm)(z, inputs).loss
        torch.testing.assert_close(loss, full)
        expected = torch.autograd.grad(full.sum(), z, retain_graph=True)[0]
        torch.testing.assert_close(torch.autograd.grad(loss.sum(), z)[0], expected)


def test_served_teacher_scores_equal_full_scores_on_teacher_support():
    """support='teacher' with only top-k + sampled scores equals the local-teacher result."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, V, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(6, V, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (6,), generator=g)
    local = full_inputs(zt, ids, k=5)
    served = ObjectiveInputs(ids, TeacherScores(topk_ids=local.teacher.topk_ids, topk_logprobs=local.teacher.topk_logprobs,
                                                sampled_logprobs=local.teacher.sampled_logprobs))
    for norm in ("none", "stopgrad", "renorm", "tail"):
        obj = make_objective("topk_rkl", k=5, support="teacher", norm=norm, include_sampled=True)
        a, b = obj(z, local).loss, obj(z, served).loss
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(torch.autograd.grad(a.sum(), z)[0], torch.autograd.grad(b.sum(), z)[0])


def test_group_advantages_are_centred_per_group():
    from opdkit.objectives import group_advantages
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=3)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]))
    scaled = group_advantages(rewards, group_size=3, scale_by_std=True)
    torch.testing.assert_close(scaled[:3], adv[:3] / (rewards[:3].std(unbiased=False) + 1e-6))
    assert scaled[3:].abs().max() == 0        # a group with equal rewards teaches nothing
