"""objectives/topk: supports as sets, the tail and renorm normalisations against their closed forms,
top-k-only lookups, overlap and rank. (Gradients, the '+1' term and whole-vocabulary limits are in
test_losses.py.)"""
from __future__ import annotations

import pytest
import torch

from opdkit.objectives.scores import ObjectiveInputs, TeacherScores
from opdkit.objectives.topk import (
    overlap_metrics,
    rank_of,
    select_support,
    teacher_logprobs_at,
    teacher_topk_ids,
    topk_rkl,
)


def _logp(rows, v=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(rows, v, generator=g, dtype=torch.float64) * 2, -1)


def _valid_sets(ids, valid):
    return [set(i[m].tolist()) for i, m in zip(ids, valid)]


def test_supports_are_the_sets_they_name_with_no_id_counted_twice():
    logp, logq = _logp(5), _logp(5, seed=1)
    sampled = torch.tensor([0, 1, 2, 3, 4])
    inputs = ObjectiveInputs(sampled, TeacherScores(logprobs=logq))
    student = [set(r.tolist()) for r in logp.topk(3, -1).indices]
    teacher = [set(r.tolist()) for r in logq.topk(3, -1).indices]
    for support, expected in (("student", student), ("teacher", teacher),
                              ("union", [s | t for s, t in zip(student, teacher)]),
                              ("intersection", [s & t for s, t in zip(student, teacher)])):
        ids, valid = select_support(logp, inputs, 3, support, include_sampled=False)
        assert _valid_sets(ids, valid) == expected, support
        assert [int(m.sum()) for m in valid] == [len(e) for e in expected], support     # no duplicates
        ids, valid = select_support(logp, inputs, 3, support, include_sampled=True)
        assert _valid_sets(ids, valid) == [e | {int(y)} for e, y in zip(expected, sampled)], support
        assert [int(m.sum()) for m in valid] == [len(e | {int(y)}) for e, y in zip(expected, sampled)], support


def test_tail_norm_is_the_kl_of_the_k_plus_one_outcome_coarsening():
    logp, logq = _logp(4), _logp(4, seed=1)
    inputs = ObjectiveInputs(torch.zeros(4, dtype=torch.long), TeacherScores(logprobs=logq))
    out = topk_rkl(logp, inputs, k=3, support="student", norm="tail", include_sampled=False)
    top = logp.topk(3, -1).indices
    p, q = logp.exp().gather(-1, top), logq.exp().gather(-1, top)
    p_all = torch.cat([p, 1 - p.sum(-1, keepdim=True)], -1)
    q_all = torch.cat([q, 1 - q.sum(-1, keepdim=True)], -1)
    torch.testing.assert_close(out.loss, (p_all * (p_all.log() - q_all.log())).sum(-1))
    torch.testing.assert_close(out.metrics["tail_mass"], 1 - p.sum(-1))


def test_renorm_is_the_kl_of_the_renormalised_distributions_on_the_support():
    logp, logq = _logp(4), _logp(4, seed=1)
    out = topk_rkl(logp, ObjectiveInputs(torch.zeros(4, dtype=torch.long), TeacherScores(logprobs=logq)),
                   k=3, support="student", norm="renorm", include_sampled=False)
    top = logp.topk(3, -1).indices
    p, q = logp.exp().gather(-1, top), logq.exp().gather(-1, top)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    torch.testing.assert_close(out.loss, (p * (p.log() - q.log())).sum(-1))
    torch.testing.assert_close(out.metrics["pk_over_qk"], logp.exp().gather(-1, top).sum(-1) /
                               logq.exp().gather(-1, top).sum(-1))


def test_a_top_k_only_teacher_is_looked_up_by_id_and_refuses_ids_it_never_scored():
    logq = _logp(3, seed=2)
    top = logq.topk(4, -1)
    sampled = torch.tensor([0, 5, 8])
    served = TeacherScores(topk_ids=top.indices, topk_logprobs=top.values,
                           sampled_logprobs=logq.gather(-1, sampled[:, None]).squeeze(-1))
    assert torch.equal(teacher_topk_ids(served, 2), top.indices[:, :2])
    assert torch.equal(teacher_topk_ids(TeacherScores(logprobs=logq), 2), top.indices[:, :2])
    ids = torch.cat([top.indices[:, :2], sampled[:, None]], -1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    torch.testing.assert_close(teacher_logprobs_at(served, sampled, ids, valid, "teacher"), logq.gather(-1, ids))
    with pytest.raises(ValueError, match="support='student' needs teacher log-probs at the student's top-K"):
        teacher_logprobs_at(served, sampled, ids, valid, "student")
    known = [set(row.tolist()) | {int(y)} for row, y in zip(top.indices, sampled)]
    unseen = torch.tensor([[min(set(range(9)) - k)] for k in known])              # an id the teacher never scored
    with pytest.raises(ValueError, match="returned no score"):
        teacher_logprobs_at(served, sampled, unseen, torch.ones_like(unseen, dtype=torch.bool), "teacher")
    with pytest.raises(ValueError, match="returned only its top-4"):
        teacher_topk_ids(served, 5)


def test_overlap_is_one_with_equal_masses_for_the_same_distribution_and_zero_for_disjoint_tops():
    logp = _logp(3)
    same = overlap_metrics(logp, TeacherScores(logprobs=logp), logp.topk(3, -1).indices)
    torch.testing.assert_close(same["overlap"], torch.ones(3, dtype=torch.float32))
    torch.testing.assert_close(same["overlap_mass_p"], same["overlap_mass_q"])
    flipped = -logp                                   # the student's least likely tokens come first
    logq = torch.log_softmax(flipped, -1)
    disjoint = overlap_metrics(logp, TeacherScores(logprobs=logq), logq.topk(3, -1).indices)
    assert torch.all(disjoint["overlap"] == 0) and torch.all(disjoint["overlap_mass_p"] == 0)


def test_rank_counts_the_strictly_more_likely_tokens():
    logprobs = torch.log(torch.tensor([[0.5, 0.2, 0.2, 0.1]]))
    assert rank_of(logprobs, torch.tensor([0])).tolist() == [0.0]
    assert rank_of(logprobs.expand(3, 4), torch.tensor([1, 2, 3])).tolist() == [1.0, 1.0, 3.0]   # ties share a rank
