"""The optimizer and its schedule: closed forms of the LR factor, the peak-LR rescale, fused AdamW."""
from __future__ import annotations

import pytest
import torch

from opdkit.engine.optim import OptimSettings, adamw, lr_factor, make_optimizer, set_peak_lr


def test_lr_schedule_closed_forms():
    assert lr_factor(0, 4, 10, "constant") == pytest.approx(0.25)
    assert lr_factor(3, 4, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(10, 0, 10, "linear") == pytest.approx(0.0)
    assert lr_factor(5, 0, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(7, 0, 10, "constant") == 1.0


def test_peak_lr_rescale_keeps_the_schedules_position():
    """The guard's lr_factor: after 3 of 10 linear-decay steps, halving the peak halves the LR in force."""
    o = OptimSettings(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0, steps=10, schedule="linear",
                      max_grad_norm=1.0)
    optimizer, scheduler = make_optimizer(torch.nn.Linear(3, 2), o)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    before = optimizer.param_groups[0]["lr"]
    assert before == pytest.approx(1e-2 * 0.7)
    set_peak_lr(optimizer, scheduler, o, 0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(before / 2)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2 * 0.6)      # the schedule goes on from there


def test_fused_adamw_matches_the_default_update():
    torch.manual_seed(0)
    weights = [torch.randn(7, 5), torch.randn(5)]
    fused_params = [torch.nn.Parameter(w.clone()) for w in weights]
    plain_params = [torch.nn.Parameter(w.clone()) for w in weights]
    fused = adamw(fused_params, lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(plain_params, lr=1e-2, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] is True
    for step in range(5):
        grads = [torch.randn_like(w) for w in weights]
        for params, opt in ((fused_params, fused), (plain_params, plain)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(fused_params, plain_params):
        assert torch.allclose(a, b, atol=1e-6)
