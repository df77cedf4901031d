"""Per-step diagnostics from tensors the step already has (MATH.md, "Diagnostics").

Two kinds:
- response-level, from the sampled token ids and their decoded text: length, truncation,
  EOS rate, hedge rate (hedge words per 1,000 words), 3-gram repeat ratio;
- token-level, from the student logits of each chunk and the teacher's log-probs (computed
  inside the chunked objective path, so no second forward): the student's log-prob of the
  sampled token (for the sampler-vs-trainer gap), the teacher's log-prob and rank of it, and
  whether its reward log q - log p is negative. The objectives add their own (entropies,
  overlap, P_K, Q_K, P_K/Q_K, tail mass).
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from opdkit.objectives.scores import ObjectiveInputs, upcast
from opdkit.objectives.topk import rank_of

HEDGE_WORDS = ("wait", "but", "maybe", "hmm", "alternatively")
_WORD = re.compile(r"[A-Za-z']+")


def hedge_rate(texts: list[str], words: tuple[str, ...] = HEDGE_WORDS) -> float:
    """Hedge words per 1,000 response words, pooled over all responses (0 when no words)."""
    hedges = {w.lower() for w in words}
    tokens = [w.lower() for t in texts for w in _WORD.findall(t)]
    return 1000.0 * sum(w in hedges for w in tokens) / len(tokens) if tokens else 0.0


def repeat_count(ids: list[int], n: int = 3) -> int:
    """Tokens whose n-gram ending there already appeared earlier in the same response."""
    seen, repeats = set(), 0
    for end in range(n, len(ids) + 1):
        gram = tuple(ids[end - n:end])
        repeats += gram in seen
        seen.add(gram)
    return repeats


def repeat_ratio(responses: list[list[int]], n: int = 3) -> float:
    """Fraction of response tokens whose n-gram ending there appeared earlier in the same response."""
    total = sum(len(r) for r in responses)
    return sum(repeat_count(r, n) for r in responses) / total if total else 0.0


def response_diagnostics(responses: list[list[int]], texts: list[str], finished: list[bool],
                         max_new_tokens: int, hedge_words: tuple[str, ...] = HEDGE_WORDS) -> dict[str, float]:
    lengths = [len(r) for r in responses]
    n = max(1, len(responses))
    return {
        "length_mean": sum(lengths) / n,
        "length_max": float(max(lengths, default=0)),
        "truncation": sum(l >= max_new_tokens and not f for l, f in zip(lengths, finished)) / n,
        "eos_rate": sum(finished) / n,
        "hedge_rate": hedge_rate(texts, hedge_words),
        "repeat_ratio": repeat_ratio(responses),
    }


@torch.no_grad()
def token_diagnostics(logits: Tensor, inputs: ObjectiveInputs, k: int = 20) -> dict[str, Tensor]:
    """Per-token diagnostics of the sampled ids from student logits (..., V) and teacher scores."""
    logits = upcast(logits.detach())
    ids = inputs.ids.long().unsqueeze(-1)
    logp_y = logits.gather(-1, ids).squeeze(-1) - torch.logsumexp(logits, -1)
    out = {"student_logprob": logp_y}
    if inputs.behaviour_logprobs is not None:
        out["sampler_gap"] = upcast(inputs.behaviour_logprobs) - logp_y
        out["sampler_gap_abs"] = out["sampler_gap"].abs()
    teacher = inputs.teacher
    logq_y = None
    if teacher.logprobs is not None:
        logq = upcast(teacher.logprobs)
        logq_y = logq.gather(-1, ids).squeeze(-1)
        out["teacher_rank"] = rank_of(logq, inputs.ids)
    elif teacher.sampled_logprobs is not None:
        logq_y = upcast(teacher.sampled_logprobs)
    if logq_y is not None:
        out["teacher_logprob"] = logq_y
        out["negative_reward"] = (logq_y - logp_y < 0).float()
    if teacher.logprobs is not None:
        out["overlap_advantage"] = overlap_advantage(logits.log_softmax(-1), upcast(teacher.logprobs), k)
    return out


def overlap_advantage(logp: Tensor, logq: Tensor, k: int) -> Tensor:
    """Rethinking OPD's overlap-token advantage: sum over TopK_S & TopK_T of p~ (log q~ - log p~).

    p~ and q~ are p and q renormalised over the overlap, so the value is -KL(p~ || q~) <= 0:
    how much the teacher disagrees with the student on the tokens both rank highly.
    0 where the top-K sets do not overlap.
    """
    k = min(k, logp.shape[-1])
    student_ids = logp.topk(k, dim=-1).indices
    teacher_ids = logq.topk(k, dim=-1).indices
    shared = (student_ids.unsqueeze(-1) == teacher_ids.unsqueeze(-2)).any(-1)           # (..., k)
    lp = logp.gather(-1, student_ids).masked_fill(~shared, float("-inf"))
    lq = logq.gather(-1, student_ids).masked_fill(~shared, float("-inf"))
    lp_t, lq_t = lp - torch.logsumexp(lp, -1, keepdim=True), lq - torch.logsumexp(lq, -1, keepdim=True)
    terms = torch.where(shared, lp_t.exp() * (lq_t - lp_t), torch.zeros_like(lp))
    return terms.sum(-1)


def with_diagnostics(objective):
    """Wrap an objective so its metrics also carry `token_diagnostics` (same tensors, no extra forward)."""
    def wrapped(logits: Tensor, inputs: ObjectiveInputs):
        out = objective(logits, inputs)
        out.metrics.update(token_diagnostics(logits, inputs))
        return out
    wrapped.__name__ = getattr(objective, "__name__", "objective")
    wrapped.options = getattr(objective, "options", {})
    return wrapped


def entropy_gap(metrics: dict[str, Tensor]) -> Tensor | None:
    """|H(q) - H(p)| per token, from the entropies the objective reported."""
    if "teacher_entropy" in metrics and "student_entropy" in metrics:
        return (metrics["teacher_entropy"] - metrics["student_entropy"]).abs()
    return None
