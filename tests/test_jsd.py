"""JSD(beta): its limits, the continuous normalised family, and agreement with TRL."""
from __future__ import annotations

import pytest
import torch

from opdkit.objectives import make_objective
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores

pytestmark = pytest.mark.numerics      # .ci/run runs these under a second kernel path too


def _pair(seed=0, shape=(4, 6, 30), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype) * 2, torch.randn(shape, generator=g, dtype=dtype) * 2


def _loss(name, z, zt, **options):
    ids = torch.zeros(z.shape[:-1], dtype=torch.long)
    return make_objective(name, **options)(z, ObjectiveInputs(ids, TeacherScores(logprobs=torch.log_softmax(zt, -1)))).loss


def _rel_err(a, b):
    return float(((a - b).abs() / b.abs()).max())


def test_jsd_over_beta_tends_to_forward_kl_linearly():
    z, zt = _pair()
    fkl = _loss("fkl", z, zt)
    errs = [_rel_err(_loss("jsd", z, zt, beta=b) / b, fkl) for b in (1e-5, 1e-6, 1e-7)]
    assert errs[-1] < 1e-4
    assert 5 < errs[0] / errs[1] < 20 and 5 < errs[1] / errs[2] < 20     # error is O(beta)


def test_jsd_over_one_minus_beta_tends_to_reverse_kl_linearly():
    z, zt = _pair(1)
    rkl = _loss("rkl", z, zt)
    errs = [_rel_err(_loss("jsd", z, zt, beta=1 - b) / b, rkl) for b in (1e-5, 1e-6, 1e-7)]
    assert errs[-1] < 1e-4
    assert 5 < errs[0] / errs[1] < 20 and 5 < errs[1] / errs[2] < 20


def test_normalised_family_is_continuous_at_both_ends():
    z, zt = _pair(2)
    for end, near in ((0.0, 1e-8), (1.0, 1 - 1e-8)):
        assert _rel_err(_loss("jsd_norm", z, zt, beta=near), _loss("jsd_norm", z, zt, beta=end)) < 1e-4
    torch.testing.assert_close(_loss("jsd_norm", z, zt, beta=0.0), _loss("fkl", z, zt))
    torch.testing.assert_close(_loss("jsd_norm", z, zt, beta=1.0), _loss("rkl", z, zt))
    torch.testing.assert_close(_loss("jsd_norm", z, zt, beta=0.3), _loss("jsd", z, zt, beta=0.3) / (0.3 * 0.7))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_normalised_family_is_accurate_arbitrarily_close_to_the_ends(dtype, tol):
    """Found by the hypothesis property test: at beta = 5e-16 the plain KL(p||m)/beta divided
    rounding error by beta and returned -0.06. Values and gradients must approach FKL and RKL."""
    z, zt = _pair(3, dtype=dtype)
    for end, name in ((0.0, "fkl"), (1.0, "rkl")):
        # the exact gap to the limit is O(gap), here < 1e3 gap; 1e-40 and the subnormal 5e-324 (hypothesis,
        # session 5) underflow exp(log beta + log q - log p) and gave loss 1.0 at p = q before the eps^2 cut
        for gap in (1e-9, 1e-12, 1e-15, 1e-40, 5e-324):
            if end == 1.0 and 1.0 - gap == 1.0:
                continue                        # beta is exactly 1 there: the RKL branch, tested above
            beta = gap if end == 0.0 else 1.0 - gap
            x = z.clone().requires_grad_()
            loss, limit = _loss("jsd_norm", x, zt, beta=beta), _loss(name, x, zt)
            err = _rel_err(loss.detach(), limit.detach())
            assert (loss >= 0).all() and err < max(tol, 1e3 * gap), (beta, err)
            g, g_limit = (torch.autograd.grad(v.sum(), x, retain_graph=True)[0] for v in (loss, limit))
            assert (g - g_limit).abs().max() < max(tol, 1e3 * gap) * g_limit.abs().max(), beta


def test_kl_mix_endpoints_and_linearity():
    z, zt = _pair(3)
    torch.testing.assert_close(_loss("kl_mix", z, zt, lam=1.0), _loss("fkl", z, zt))
    torch.testing.assert_close(_loss("kl_mix", z, zt, lam=0.0), _loss("rkl", z, zt))
    torch.testing.assert_close(_loss("kl_mix", z, zt, lam=0.3), 0.3 * _loss("fkl", z, zt) + 0.7 * _loss("rkl", z, zt))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_values_and_gradients_agree_with_trl_generalized_jsd_loss(beta):
    from trl.experimental.gkd import GKDTrainer

    z, zt = _pair(4, dtype=torch.float32)
    labels = torch.randint(0, 30, z.shape[:-1], generator=torch.Generator().manual_seed(0))
    labels[:, :2] = -100                                                 # prompt positions
    mask = (labels != -100).float()
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    trl = GKDTrainer.generalized_jsd_loss(z1, zt, labels=labels, beta=beta)
    per_token = _loss("jsd", z2, zt, beta=beta)
    ours = (per_token * mask).sum() / mask.sum()
    torch.testing.assert_close(ours, trl, rtol=1e-5, atol=1e-6)
    trl.backward()
    ours.backward()
    torch.testing.assert_close(z2.grad, z1.grad, rtol=1e-4, atol=1e-7)
