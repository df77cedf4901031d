"""Catch a step that blows the weights up, before it is logged, checkpointed or built upon.

A learning rate far too large (optim.lr=1e30) gives finite losses and gradients, so the
non-finite-step check never fires, while AdamW moves every weight by ~lr: the next forward
is inf/NaN, and the run would go on to checkpoint exploded weights. `WeightWatch` compares
the global L2 norm of the trainable weights before and after each optimizer step (one
reduction over the parameters per step) and raises `Diverged` when the norm is non-finite
or grew by more than `max_growth` times in one step. The runner then stops without saving:
the newest checkpoint is the state before the bad step (or the run restarts from step 0).
"""
from __future__ import annotations

import math

import torch

from opdkit.errors import TrainingError


class Diverged(TrainingError):
    """One optimizer step made the weights non-finite or multiplied their norm; the message says how to resume."""


def weight_norm(model: torch.nn.Module) -> float:
    norms = []
    for p in model.parameters():
        if p.requires_grad:
            n = torch.linalg.vector_norm(p.detach().float())
            norms.append(n.full_tensor() if hasattr(n, "full_tensor") else n)    # FSDP2: a DTensor
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def suggested_lr(lr: float) -> float:
    """A learning rate to resume with: a tenth of the one that diverged, and never above 1e-5
    (the config default), so that following the advice twice cannot diverge the same way."""
    return min(lr / 10, 1e-5)


class WeightWatch:
    def __init__(self, max_growth: float):
        self.max_growth, self.norm = max_growth, None

    def forget(self) -> None:
        """The weights were replaced (resume, rollback): measure them again before the next step."""
        self.norm = None

    def before_step(self, model) -> None:
        if self.norm is None:
            self.norm = weight_norm(model)

    def after_step(self, model, step: int, lr: float, newest_checkpoint) -> None:
        """Raise Diverged when the step exploded the weights, else remember their norm."""
        before, after = self.norm, weight_norm(model)
        grew = self.max_growth > 0 and before and after > self.max_growth * before
        if math.isfinite(after) and not grew:
            self.norm = after
            return
        where = (f"the newest checkpoint, {newest_checkpoint.name}, is intact and is where --resume continues"
                 if newest_checkpoint is not None else "no checkpoint exists yet, so --resume starts from step 0")
        raise Diverged(f"step {step} diverged: the weights' norm went from {before:.4g} to {after:.4g} in one step "
                       f"(optim.lr={lr:g}). The step was undone: not logged, not saved, and the run stopped; {where}. "
                       f"Resume with a smaller learning rate: rerun the same command with --resume "
                       f"optim.lr={suggested_lr(lr):g} (config.yaml records the change)")
