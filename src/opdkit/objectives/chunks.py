"""Sampled-token reverse KL over aligned chunks: the cross-tokenizer baseline (MATH.md, issue 16).

When teacher and student tokenise text differently, their per-token log-probs are not of the
same events. At a chunk (the smallest span where both tokenisations have a boundary,
`opdkit.models.alignment`) they are: the teacher's log Q(c) is the sum of its token log-probs
over the chunk, the student's log P(c) the sum of its own, both of the same text after the
same text. Every student token of chunk c carries the reward r_c = log Q(c) - log P(c), so the
loss -sum_c sg(r_c) log P(c) is the policy gradient of the sampled reverse KL with chunks as the
actions. The rewards telescope: sum_c r_c = log Q(text) - log P(y), whose expectation under
y ~ P is minus the sequence-level reverse KL (with Q scoring the teacher's own tokenisation of
the text). Where every chunk is one token on both sides this is `sampled_rkl` exactly.

A teacher that shares the student's tokenizer gives no chunks: every token is its own chunk,
and its reward is log q(y) - log p(y) from the teacher's sampled-token or full log-probs.
"""
from __future__ import annotations

import bisect

import torch
from torch import Tensor

from opdkit.objectives import topk as topk_lib
from opdkit.objectives.scores import ObjectiveInputs, ObjectiveOutput, upcast


def chunk_rewards(logp_y: Tensor, chunk_ids: Tensor, chunk_logprobs: Tensor) -> Tensor:
    """r_c = log Q(c) - log P(c) at every position of chunk c; any leading shape.

    logp_y: the student's log-prob of each token (detached by the caller); chunk_ids name each
    position's chunk; chunk_logprobs hold log Q(c) at each position of c.
    """
    flat_ids = chunk_ids.reshape(-1)
    _, inverse = torch.unique(flat_ids, return_inverse=True)
    flat_logp = logp_y.reshape(-1)
    student = torch.zeros(int(inverse.max()) + 1 if inverse.numel() else 0, dtype=flat_logp.dtype,
                          device=flat_logp.device).index_add(0, inverse, flat_logp)
    return (upcast(chunk_logprobs).reshape(-1) - student[inverse]).view(logp_y.shape)


def spread_teacher_logprob(chunk_ids: Tensor, chunk_logprobs: Tensor) -> Tensor:
    """log Q(c) / |c| at each position: sums to log Q(text) over a response (teacher NLL per student token)."""
    flat_ids = chunk_ids.reshape(-1)
    _, inverse, counts = torch.unique(flat_ids, return_inverse=True, return_counts=True)
    return (upcast(chunk_logprobs).reshape(-1) / counts[inverse]).view(chunk_ids.shape)


def chunk_rkl(logits: Tensor, inputs: ObjectiveInputs, clip: float | None = None,
              diagnostic_k: int = 20) -> ObjectiveOutput:
    """Chunk-level sampled RKL in policy-gradient form: -sg(log Q(c) - log P(c)) * log p(y_t) for t in c."""
    # losses.py holds the objective table that names this function, so it is imported here, not at the top
    from opdkit.objectives.losses import _gather, _logp, policy_gradient_loss, teacher_logprob_of_sampled
    logp = _logp(logits)
    logp_y = _gather(logp, inputs.ids)
    t = inputs.teacher
    if t.chunk_ids is None:
        teacher_y = teacher_logprob_of_sampled(inputs, "chunk_rkl")
        reward = teacher_y - logp_y.detach()
    else:
        reward = chunk_rewards(logp_y.detach(), t.chunk_ids, t.chunk_logprobs)
        teacher_y = spread_teacher_logprob(t.chunk_ids, t.chunk_logprobs)
    loss = policy_gradient_loss(logp_y, reward, inputs.behaviour_logprobs, clip)
    metrics = topk_lib.position_metrics(logp.detach(), t, diagnostic_k) if t.chunk_ids is None else \
        {"student_entropy": topk_lib.entropy(logp.detach())}
    metrics.update({"reward": reward, "teacher_logprob": teacher_y, "student_logprob": logp_y.detach()})
    return ObjectiveOutput(loss, metrics)


def row_slices(n: int, size: int, chunk_ids: Tensor | None) -> list[slice]:
    """Row ranges of at most ~`size` rows; with chunk ids, a range ends only where a chunk does
    (a chunk's reward needs all its tokens in one objective call), so a range may run longer."""
    if chunk_ids is None or n == 0:
        return [slice(s, min(n, s + size)) for s in range(0, n, size)]
    ids = chunk_ids.reshape(-1)
    cuts = ((ids[1:] != ids[:-1]).nonzero().squeeze(-1) + 1).tolist() + [n]
    out, start = [], 0
    while start < n:
        end = cuts[bisect.bisect_left(cuts, min(n, start + size))]
        out.append(slice(start, end))
        start = end
    return out
