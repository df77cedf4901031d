"""Token-mean reduction over the optimizer step, and masks that really exclude tokens."""
from __future__ import annotations

import torch

from opdkit.objectives import make_objective
from opdkit.objectives.reduction import token_mean, token_weights
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores


def test_doubling_the_step_token_count_halves_the_reduced_loss():
    loss = torch.rand(4, 9)
    mask = (torch.rand(4, 9) > 0.4).float()
    n = mask.sum()
    torch.testing.assert_close(token_mean(loss, mask, 2 * n), token_mean(loss, mask, n) / 2)
    doubled = token_mean(torch.cat([loss, loss]), torch.cat([mask, mask]))
    torch.testing.assert_close(doubled, token_mean(loss, mask))      # same tokens twice: same mean


def test_accumulated_micro_batches_equal_one_big_batch():
    g = torch.Generator().manual_seed(0)
    losses = [torch.rand(2, 5, generator=g), torch.rand(3, 11, generator=g)]
    masks = [torch.ones(2, 5), (torch.rand(3, 11, generator=g) > 0.2).float()]
    n = sum(m.sum() for m in masks)                       # the whole step's loss-bearing tokens
    accumulated = sum(token_mean(l, m, n) for l, m in zip(losses, masks, strict=True))
    flat = torch.cat([l[m > 0] for l, m in zip(losses, masks, strict=True)])
    torch.testing.assert_close(accumulated, flat.mean())
    naive = sum(token_mean(l, m) for l, m in zip(losses, masks, strict=True)) / 2
    assert abs(float(naive - flat.mean())) > 1e-3          # the per-micro-batch mean is the bug


def test_masked_positions_change_neither_loss_nor_gradient():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 6, 20, generator=g)
    logq = torch.log_softmax(torch.randn(2, 6, 20, generator=g), -1)
    ids = torch.randint(0, 20, (2, 6), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]]).float()   # prompt, response, pad
    inputs = ObjectiveInputs(ids, TeacherScores(logprobs=logq))
    objective = make_objective("topk_rkl_sg", k=4)

    def loss_and_grad(logits):
        logits = logits.clone().requires_grad_()
        loss = token_mean(objective(logits, inputs).loss, mask)
        return loss, torch.autograd.grad(loss, logits)[0]

    loss_a, grad_a = loss_and_grad(z)
    z_b = z.clone()
    z_b[mask == 0] = torch.randn(int((mask == 0).sum()), 20, generator=g) * 10
    loss_b, grad_b = loss_and_grad(z_b)
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(grad_a, grad_b)
    assert grad_a[mask == 0].abs().max() == 0


def test_token_weights_sum_to_one_over_the_step_and_never_divide_by_zero():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(token_weights(mask, mask.sum()).sum(), torch.tensor(1.0))
    assert token_weights(torch.zeros(2, 3), 0.0).abs().sum() == 0
