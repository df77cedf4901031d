"""Log-probabilities done once and right: selective log-softmax and the chunked objective path.

The alignment convention (output t scores token t + 1) lives with the forward passes in
`opdkit.models.forward`; everything here receives hidden states already at the scoring positions.

The chunked path takes hidden states and lm-head weights instead of logits and runs any
objective over row chunks, so the (N, T, V) fp32 logits never exist at once. It computes
the gradient during the forward (the loss is a weighted sum, so the upstream gradient is
a scalar) and keeps only dL/dhidden and dL/dweight: the four N x H x V matmuls that any
exact forward+backward needs, and no recomputation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from opdkit.objectives.chunks import row_slices
from opdkit.objectives.scores import Head, ObjectiveInputs, ObjectiveOutput

__all__ = ["Head", "ObjectiveResult", "objective_loss", "chunked_objective_loss", "default_chunk_size",
           "selective_log_softmax"]

Objective = Callable[[Tensor, ObjectiveInputs], ObjectiveOutput]


def selective_log_softmax(logits: Tensor, ids: Tensor) -> Tensor:
    """log softmax(logits)[ids] in fp32 without keeping a full log-softmax: (..., V), (...) -> (...)."""
    rows = logits.reshape(-1, logits.shape[-1])
    flat_ids = ids.reshape(-1, 1).long()
    out = []
    for start in range(0, rows.shape[0], 1024):     # bounds the fp32 upcast to 1024 rows
        chunk = rows[start:start + 1024].float()
        out.append(chunk.gather(-1, flat_ids[start:start + 1024]).squeeze(-1) - torch.logsumexp(chunk, -1))
    return torch.cat(out).view(ids.shape) if out else logits.new_zeros(ids.shape, dtype=torch.float32)


@dataclass(frozen=True)
class ObjectiveResult:
    loss: Tensor                 # scalar: sum of token_weights * per-token loss
    per_token: Tensor            # (...,) detached per-token loss
    metrics: dict[str, Tensor]   # (...,) each, detached


def objective_loss(objective: Objective, logits: Tensor, inputs: ObjectiveInputs,
                   token_weights: Tensor) -> ObjectiveResult:
    """The plain path: materialised logits (..., V) in, weighted loss out."""
    out = objective(logits, inputs.resolved())
    loss = (out.loss * token_weights).sum()
    return ObjectiveResult(loss, out.loss.detach(), {k: v.detach() for k, v in out.metrics.items()})


def chunked_objective_loss(objective: Objective, student: Head, inputs: ObjectiveInputs,
                           token_weights: Tensor, teacher: Head | None = None,
                           chunk_size: int | None = None) -> ObjectiveResult:
    """Same result and gradients as `objective_loss` on full logits, chunk by chunk.

    student.hidden: (..., H) with grad; inputs and token_weights share its leading shape.
    A local teacher's scores carry its `Head` (inputs.teacher.head): its full log-probs are
    made per chunk (under no_grad). `teacher` is shorthand for putting a head there. Rows
    with zero weight (prompt, padding) are skipped; their per-token values are reported as 0.
    chunk_size: rows per chunk; default `default_chunk_size(V)`.
    """
    if teacher is not None:
        inputs = replace(inputs, teacher=replace(inputs.teacher, head=teacher))
    lead = tuple(student.hidden.shape[:-1])
    if tuple(token_weights.shape) != lead:
        raise ValueError(f"token_weights has shape {tuple(token_weights.shape)}; expected {lead}")
    head = inputs.teacher.head
    if head is not None and tuple(head.hidden.shape[:-1]) != lead:
        raise ValueError(f"teacher hidden has leading shape {tuple(head.hidden.shape[:-1])}; expected {lead}")
    rows = token_weights.reshape(-1).nonzero().squeeze(-1)      # one host sync per call
    plan = _ChunkPlan(objective, student, inputs.flatten().rows(rows), token_weights.reshape(-1)[rows],
                      chunk_size or default_chunk_size(student.weight.shape[0]))
    hidden = student.hidden.reshape(-1, student.hidden.shape[-1])[rows]
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or student.weight.requires_grad or
                                              (student.bias is not None and student.bias.requires_grad))
    if needs_grad:
        loss = _ChunkedLoss.apply(hidden, student.weight, student.bias, plan)
    else:
        with torch.no_grad():
            loss = plan.run(hidden, want_grads=False)[0]
    per_token, metrics = plan.scatter_back(rows, lead, token_weights.numel())
    return ObjectiveResult(loss, per_token, metrics)


def default_chunk_size(vocab: int, target_bytes: int = 64 << 20) -> int:
    """Rows per chunk so one fp32 (rows, V) buffer is about 64 MiB.

    Measured on CPU (BENCHMARKS.md): buffers under glibc's mmap threshold (32 MiB) are served
    from the heap and fragment it, so 128-row chunks at V = 49152 peaked at 3.3x the memory
    of 256-row chunks. Larger buffers are mmap'd and returned to the OS on free.
    """
    return max(1, target_bytes // (4 * vocab))


class _ChunkPlan:
    """One chunked evaluation: runs the objective per chunk and collects values and grads."""

    def __init__(self, objective, student: Head, inputs: ObjectiveInputs, weights: Tensor, chunk_size: int):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.objective, self.student, self.inputs = objective, student, inputs
        self.weights, self.chunk_size = weights, chunk_size
        self.per_token: list[Tensor] = []
        self.metrics: list[dict[str, Tensor]] = []

    def run(self, hidden: Tensor, want_grads: bool):
        """Returns (loss, grad_hidden, grad_weight, grad_bias); grads are None unless wanted."""
        weight, bias = self.student.weight, self.student.bias
        grad_h = torch.zeros_like(hidden) if want_grads else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_grads else None
        grad_b = None if bias is None or not want_grads else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for rows in row_slices(hidden.shape[0], self.chunk_size, self.inputs.teacher.chunk_ids):   # aligned chunks whole
            h = hidden[rows].detach()
            raw = F.linear(h, weight.detach(), None if bias is None else bias.detach())   # (C, V)
            raw.requires_grad_(want_grads)
            with torch.set_grad_enabled(want_grads):
                out = self.objective(self.student.scale(raw), self.inputs.rows(rows).resolved())   # log q: this chunk only
                chunk_loss = (out.loss * self.weights[rows]).sum()
            if want_grads:
                (g,) = torch.autograd.grad(chunk_loss, raw)                               # (C, V)
                grad_h[rows] = g @ weight.detach()
                if g.dtype == torch.float32:
                    grad_w.addmm_(g.t(), h)                      # in place: no (V, H) temporary
                else:
                    grad_w += (g.t() @ h).float()                # low precision: accumulate in fp32
                if grad_b is not None:
                    grad_b += g.float().sum(0)
            total += chunk_loss.detach()
            self.per_token.append(out.loss.detach())
            self.metrics.append({k: v.detach() for k, v in out.metrics.items()})
        return total, grad_h, grad_w, grad_b

    def scatter_back(self, rows: Tensor, lead: tuple[int, ...], numel: int):
        """Per-token loss and metrics at their original positions (0 where skipped)."""
        def place(parts: list[Tensor]) -> Tensor:
            values = torch.cat(parts) if parts else torch.zeros(0)
            full = torch.zeros(numel, dtype=torch.float32, device=rows.device)
            full[rows] = values.float()
            return full.view(lead)
        per_token = place(self.per_token)
        keys = self.metrics[0].keys() if self.metrics else ()
        metrics = {k: place([m[k] for m in self.metrics]) for k in keys}
        return per_token, metrics


class _ChunkedLoss(torch.autograd.Function):
    """Scalar loss whose gradients were computed in forward; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, plan: _ChunkPlan) -> Tensor:
        total, grad_h, grad_w, grad_b = plan.run(hidden, want_grads=True)
        # Held on ctx, not saved_tensors, so backward can hand each buffer to autograd
        # without a copy: a (V, H) gradient is the largest thing this path allocates.
        ctx.grads = [grad_h, grad_w.to(weight.dtype), None if grad_b is None else grad_b.to(bias.dtype)]
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.grads is None:
            raise RuntimeError("chunked_objective_loss supports one backward per forward (no retain_graph)")
        grads, ctx.grads = ctx.grads, None
        scaled = [None if g is None else g.mul_(grad_out.to(g.dtype)) for g in grads]
        return (*scaled, None)
