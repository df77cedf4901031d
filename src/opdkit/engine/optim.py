"""The optimizer and its learning-rate schedule, from values.

`OptimSettings` holds what the optimizer reads from the config (built once at the boundary).
`make_optimizer` returns AdamW (fused where torch has a kernel for the tensors; with
`optim.state=8bit`, bitsandbytes' AdamW8bit, whose moments are blockwise-quantised uint8) and a
LambdaLR with linear warm-up and constant, linear or cosine decay; `set_peak_lr` changes the
peak learning rate mid-run at the schedule's current position (the guard's `lr_factor`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    warmup_steps: int
    steps: int
    schedule: str                 # constant | linear | cosine
    max_grad_norm: float          # 0: no clipping
    state: str = "fp32"           # AdamW moments: fp32 | 8bit

    @classmethod
    def from_config(cls, cfg) -> "OptimSettings":
        o = cfg.optim
        return cls(o.lr, tuple(o.betas), o.weight_decay, o.warmup_steps, o.steps, o.schedule, o.max_grad_norm,
                   o.state)


def make_optimizer(student: torch.nn.Module, o: OptimSettings):
    """(AdamW over the trainable parameters, its LambdaLR schedule)."""
    params = [p for p in student.parameters() if p.requires_grad]
    options = dict(lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    optimizer = adamw_8bit(params, **options) if o.state == "8bit" else adamw(params, **options)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, o.warmup_steps, o.steps, o.schedule))
    return optimizer, schedule


def adamw(params: list, **options) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for these tensors, else the default.

    Measured on 61M CPU parameters (benchmarks/adamw.py): the default (foreach) step takes
    5.4x the CPU time of the fused one and its parameter-sized temporaries raise peak RSS by
    212 MiB. The update is the same algorithm; results agree to float rounding.
    FSDP2's sharded (DTensor) parameters keep the default implementation.
    """
    devices = {p.device.type for p in params}
    sharded = any(hasattr(p, "device_mesh") for p in params)
    if len(devices) == 1 and devices <= {"cpu", "cuda"} and not sharded:
        try:
            return torch.optim.AdamW(params, fused=True, **options)
        except (RuntimeError, ValueError):       # a dtype or device the fused kernel does not take
            pass
    return torch.optim.AdamW(params, **options)


def adamw_8bit(params: list, **options):
    """bitsandbytes' AdamW8bit: both moments blockwise-quantised to uint8 (absmax per 256 values,
    dynamic quantisation map), 2 bytes per parameter instead of 8; it runs on CPU tensors
    (verified with bitsandbytes 0.50.2). Tensors under 4096 values (norms) keep fp32 moments, its default.
    BENCHMARKS.md `Issue 19 (session 5)` has the measured memory and the drift against fp32 AdamW.
    """
    import bitsandbytes  # an optional dependency: config_checks refuses optim.state=8bit without it
    return bitsandbytes.optim.AdamW8bit(params, **options)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak LR before optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def set_peak_lr(optimizer, scheduler, o: OptimSettings, scale: float) -> None:
    """Peak LR = o.lr * scale from now on, at the schedule's current position."""
    scheduler.base_lrs = [o.lr * scale for _ in optimizer.param_groups]
    factor = lr_factor(scheduler.last_epoch, o.warmup_steps, o.steps, o.schedule)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor


def grad_norm(model, max_norm: float) -> float:
    """The global gradient norm, clipped to `max_norm` when it is positive."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)     # FSDP2: a DTensor
