"""Top-K supports and the top-K reverse-KL family that Many Faces dissects.

A support is a per-position set of token ids, held as `ids` (..., S) with a `valid`
mask (..., S): unions and intersections have a varying size per position, so duplicates
and dropped ids stay in place with valid = False and weight 0.

The four normalisations of D_K = sum_{v in K} p (log p - log q):
  none      grad = sum_K p (log p - log q) grad log p + grad P_K. The '+1' (grad P_K)
            pushes mass out of K even at p = q; fixed point p = q/e on K.
  stopgrad  sum_K p * sg(log p - log q): the '+1' is gone; fixed point p = q on K.
  renorm    KL(p/P_K || q/Q_K) on K: shape matched, P_K left free.
  tail      D_K + p_tail log(p_tail / q_tail): an exact KL of the (K+1)-outcome coarsening.
"""
from __future__ import annotations

import torch
from torch import Tensor

from opdkit.objectives.scores import ObjectiveInputs, ObjectiveOutput, TeacherScores, upcast

SUPPORTS = ("student", "teacher", "union", "intersection")
NORMS = ("none", "stopgrad", "renorm", "tail")
NEG_INF = float("-inf")
# Floor for log tail mass: keeps 0 * log 0 finite when K covers the whole vocabulary.
LOG_FLOOR = -1e4


def entropy(logp: Tensor) -> Tensor:
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def position_metrics(logp: Tensor, teacher: TeacherScores, k: int) -> dict[str, Tensor]:
    """Student entropy; teacher entropy and top-k overlap where the teacher allows."""
    k = min(k, logp.shape[-1])            # diagnostics on a vocabulary smaller than k
    if teacher.logprobs is None and teacher.topk_ids is not None:
        # A served teacher may return fewer than k (vLLM --max-logprobs); the diagnostics use what
        # it returned. Losses that need a top-k support still refuse, in select_support.
        k = min(k, teacher.topk_ids.shape[-1])
    metrics = {"student_entropy": entropy(logp)}
    if teacher.logprobs is not None:
        metrics["teacher_entropy"] = entropy(upcast(teacher.logprobs))
    teacher_ids = teacher_topk_ids(teacher, k)
    if teacher_ids is not None:
        metrics.update(overlap_metrics(logp, teacher, teacher_ids))
    return metrics


def teacher_topk_ids(teacher: TeacherScores, k: int) -> Tensor | None:
    """The teacher's top-k ids from its own top-k list, or from full log-probs; None if neither."""
    if teacher.topk_ids is not None and teacher.topk_ids.shape[-1] >= k:
        return teacher.topk_ids[..., :k]
    if teacher.logprobs is not None:
        return teacher.logprobs.topk(k, dim=-1).indices
    if teacher.topk_ids is not None:
        raise ValueError(f"k={k} but the teacher returned only its top-{teacher.topk_ids.shape[-1]} "
                         "(a served teacher caps k, e.g. vLLM --max-logprobs); lower k or raise the cap")
    return None


def _member(ids: Tensor, pool: Tensor) -> Tensor:
    """(..., S) bool: whether each id appears anywhere in `pool` (..., P) at its position."""
    return (ids.unsqueeze(-1) == pool.unsqueeze(-2)).any(-1)


def select_support(logp: Tensor, inputs: ObjectiveInputs, k: int, support: str,
                   include_sampled: bool) -> tuple[Tensor, Tensor]:
    """Support ids (..., S) and valid mask (..., S). The choice carries no gradient."""
    student = logp.detach().topk(k, dim=-1).indices
    if support == "student":
        ids, valid = student, torch.ones_like(student, dtype=torch.bool)
    else:
        teacher = teacher_topk_ids(inputs.teacher, k)
        if teacher is None:
            raise ValueError(f"support={support!r} needs the teacher's top-k ids or full log-probs")
        if support == "teacher":
            ids, valid = teacher, torch.ones_like(teacher, dtype=torch.bool)
        elif support == "union":
            ids = torch.cat([student, teacher], -1)
            valid = torch.cat([torch.ones_like(student, dtype=torch.bool), ~_member(teacher, student)], -1)
        elif support == "intersection":
            ids, valid = student, _member(student, teacher)
        else:
            raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
    if include_sampled:
        sampled = inputs.ids.long().unsqueeze(-1)
        # A sampled id that only matches invalid (dropped) entries is still new.
        fresh = ~((ids == sampled) & valid).any(-1, keepdim=True)
        ids, valid = torch.cat([ids, sampled], -1), torch.cat([valid, fresh], -1)
    return ids, valid


def teacher_logprobs_at(teacher: TeacherScores, sampled: Tensor, ids: Tensor, valid: Tensor,
                        support: str) -> Tensor:
    """log q at support ids. Full log-probs gather directly; top-k-only teachers look ids up."""
    if teacher.logprobs is not None:
        return upcast(teacher.logprobs).gather(-1, ids)
    if support in ("student", "union"):
        raise ValueError(
            f"support={support!r} needs teacher log-probs at the student's top-K tokens, but the "
            "teacher returned only its own top-k scores (a served teacher). Use support='teacher' "
            "or 'intersection', or a local teacher.")
    known_ids, known_lp = [teacher.topk_ids], [upcast(teacher.topk_logprobs)]
    if teacher.sampled_logprobs is not None:
        known_ids.append(sampled.long().unsqueeze(-1))
        known_lp.append(upcast(teacher.sampled_logprobs).unsqueeze(-1))
    known_ids, known_lp = torch.cat(known_ids, -1), torch.cat(known_lp, -1)
    match = ids.unsqueeze(-1) == known_ids.unsqueeze(-2)                       # (..., S, P)
    lq = torch.where(match, known_lp.unsqueeze(-2), NEG_INF).amax(-1)           # (..., S)
    if bool((valid & ~match.any(-1)).any()):
        raise ValueError("the sampled token is in the support but the teacher returned no score for "
                         "it: provide TeacherScores.sampled_logprobs or set include_sampled=False")
    return torch.where(valid, lq, torch.zeros_like(lq))


def _masked_logsumexp(x: Tensor, valid: Tensor) -> Tensor:
    return torch.logsumexp(x.masked_fill(~valid, NEG_INF), -1)


def _log_tail(logprobs: Tensor, ids: Tensor, valid: Tensor) -> Tensor:
    """log of the mass outside the support, from full log-probs (..., V)."""
    in_support = torch.zeros_like(logprobs).scatter_add(-1, ids, valid.to(logprobs.dtype)) > 0
    return torch.logsumexp(logprobs.masked_fill(in_support, NEG_INF), -1).clamp(min=LOG_FLOOR)


def _log1m_exp(log_x: Tensor) -> Tensor:
    """log(1 - exp(log_x)) for log_x <= 0, floored; used when only top-k teacher scores exist."""
    return torch.log(-torch.expm1(log_x.clamp(max=-1e-7))).clamp(min=LOG_FLOOR)


def topk_rkl(logp: Tensor, inputs: ObjectiveInputs, k: int, support: str, norm: str,
             include_sampled: bool):
    """Per-token top-K RKL and its diagnostics. `logp` is the student's full log-softmax."""
    ids, valid = select_support(logp, inputs, k, support, include_sampled)
    nonempty = valid.any(-1)
    lp = logp.gather(-1, ids).masked_fill(~valid, 0.0)                          # (..., S)
    lq = teacher_logprobs_at(inputs.teacher, inputs.ids, ids, valid, support).masked_fill(~valid, 0.0)
    # An empty support (intersection of disjoint top-Ks) has log P_K = -inf; keep it finite
    # so no inf or nan reaches the gradient; such rows have zero loss.
    log_pk = _masked_logsumexp(lp, valid).masked_fill(~nonempty, 0.0)
    log_qk = _masked_logsumexp(lq, valid).masked_fill(~nonempty, 0.0)
    if norm == "tail":
        log_pt = _log_tail(logp, ids, valid)
        if inputs.teacher.logprobs is not None:
            log_qt = _log_tail(upcast(inputs.teacher.logprobs), ids, valid)
        else:
            # An empty support leaves one outcome, the tail: Q_tail = 1, so log Q_tail = 0 (not
            # log1m_exp(log Q_K = 0 as masked) = log 1e-7, a spurious loss of 16.1).
            log_qt = torch.where(nonempty, _log1m_exp(log_qk), torch.zeros_like(log_qk))
        tail = log_pt.exp() * (log_pt - log_qt)
    elif norm == "renorm":
        lp, lq = lp - log_pk.unsqueeze(-1), lq - log_qk.unsqueeze(-1)
    elif norm not in ("none", "stopgrad"):
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    log_ratio = (lp - lq).detach() if norm == "stopgrad" else lp - lq
    loss = torch.where(valid, lp.exp() * log_ratio, torch.zeros_like(lp)).sum(-1)
    if norm == "tail":
        loss = loss + tail
    metrics = position_metrics(logp.detach(), inputs.teacher, k)
    metrics.update(support_metrics(log_pk.detach(), log_qk.detach(), valid))
    return only_where_defined(ObjectiveOutput(loss, metrics), inputs.teacher)


def only_where_defined(out: ObjectiveOutput, teacher: TeacherScores) -> ObjectiveOutput:
    """Zero loss and metrics where the teacher's top-k is not defined (`topk_mask`: a teacher with
    another tokenizer has one only at chunk starts, where both sides condition on the same text)."""
    if teacher.topk_mask is None:
        return out
    keep = teacher.topk_mask.to(out.loss.dtype)
    return ObjectiveOutput(out.loss * keep, {k: v * keep for k, v in out.metrics.items()})


def support_metrics(log_pk: Tensor, log_qk: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """P_K, Q_K, P_K/Q_K, tail mass and support size; all 0 where the support is empty."""
    nonempty = valid.any(-1)
    zero = torch.zeros_like(log_pk)
    pk, qk = torch.where(nonempty, log_pk.exp(), zero), torch.where(nonempty, log_qk.exp(), zero)
    return {"p_k": pk, "q_k": qk, "pk_over_qk": torch.where(nonempty, torch.exp(log_pk - log_qk), zero),
            "tail_mass": 1.0 - pk, "support_size": valid.sum(-1).float()}


def topk_fkl_teacher(logp: Tensor, inputs: ObjectiveInputs, k: int):
    """sum over the teacher's top-K of q (log q - log p), p normalised over the whole vocabulary."""
    teacher = inputs.teacher
    ids = teacher_topk_ids(teacher, k)
    if ids is None:
        raise ValueError("topk_fkl_teacher needs the teacher's top-k ids and log-probs (or full log-probs)")
    if teacher.logprobs is not None:
        lq = upcast(teacher.logprobs).gather(-1, ids)
    else:
        lq = upcast(teacher.topk_logprobs[..., :k])
    lp = logp.gather(-1, ids)
    loss = (lq.exp() * (lq - lp)).sum(-1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    metrics = position_metrics(logp.detach(), teacher, k)
    metrics.update(support_metrics(_masked_logsumexp(lp.detach(), valid), _masked_logsumexp(lq, valid), valid))
    return only_where_defined(ObjectiveOutput(loss, metrics), teacher)


@torch.no_grad()
def overlap_metrics(logp: Tensor, teacher: TeacherScores, teacher_ids: Tensor) -> dict[str, Tensor]:
    """Top-K overlap ratio |TopK_S & TopK_T| / K and the mass of p and q on the overlap."""
    k = teacher_ids.shape[-1]
    student_ids = logp.topk(k, dim=-1).indices
    shared = (student_ids.unsqueeze(-1) == teacher_ids.unsqueeze(-2)).any(-1)   # (..., K) over student ids
    p_overlap = (logp.gather(-1, student_ids).exp() * shared).sum(-1)
    metrics = {"overlap": shared.float().mean(-1), "overlap_mass_p": p_overlap}
    if teacher.logprobs is not None:
        q_at = upcast(teacher.logprobs).gather(-1, student_ids).exp()
        metrics["overlap_mass_q"] = (q_at * shared).sum(-1)
    elif teacher.topk_ids is not None:
        t_shared = (teacher_ids.unsqueeze(-1) == student_ids.unsqueeze(-2)).any(-1)
        metrics["overlap_mass_q"] = (upcast(teacher.topk_logprobs[..., :k]).exp() * t_shared).sum(-1)
    return metrics


@torch.no_grad()
def rank_of(logprobs: Tensor, ids: Tensor) -> Tensor:
    """0-based rank of each id under `logprobs` (0 = the most likely token)."""
    at = logprobs.gather(-1, ids.long().unsqueeze(-1))
    return (logprobs > at).sum(-1).float()
