"""Reducing per-token losses: one token mean over the whole optimizer step.

A step may span several micro-batches (and, later, ranks). Dividing each micro-batch by its
own token count weights short micro-batches up (the gradient-accumulation bug peers keep
reporting: TRL #6006, #6478). Instead count the loss-bearing tokens of the whole step first
and divide every micro-batch's masked sum by that one number: the engine's micro-batches
weight their per-token losses by `token_weights(mask, step_tokens)`.
"""
from __future__ import annotations

import torch
from torch import Tensor


def token_weights(mask: Tensor, step_tokens: Tensor | float) -> Tensor:
    """Per-token weights (N, T): mask / step_tokens, so sum(weights * loss) is the step mean."""
    return mask.float() / torch.as_tensor(step_tokens, dtype=torch.float32).clamp_min(1.0)


def token_mean(per_token: Tensor, mask: Tensor, step_tokens: Tensor | float | None = None) -> Tensor:
    """sum(mask * loss) / step_tokens (default: this batch's own token count)."""
    if per_token.shape != mask.shape:
        raise ValueError(f"per-token loss {tuple(per_token.shape)} and mask {tuple(mask.shape)} differ in shape")
    if step_tokens is None:
        step_tokens = mask.float().sum()
    return (per_token * token_weights(mask, step_tokens)).sum()
