"""engine/evaluate: held-out metrics that follow from the construction, evaluation that neither
perturbs nor varies between calls, and the P_K / Q_K support metrics against their closed form.
(gap_recovery's closed form is in test_diagnostics.py.)"""
from __future__ import annotations

import torch
from conftest import engine_overrides

from opdkit.engine.config import load_config
from opdkit.engine.evaluate import evaluate_session, kl_with_support, teacher_kl
from opdkit.engine.session import build_session
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores


def test_kl_with_support_reports_the_student_top_k_masses():
    g = torch.Generator().manual_seed(0)
    logits, logq = torch.randn(5, 12, generator=g), torch.log_softmax(torch.randn(5, 12, generator=g), -1)
    out = kl_with_support(k=4)(logits, ObjectiveInputs(torch.zeros(5, dtype=torch.long), TeacherScores(logprobs=logq)))
    logp = torch.log_softmax(logits, -1)
    top = logp.topk(4, -1).indices
    pk, qk = logp.exp().gather(-1, top).sum(-1), logq.exp().gather(-1, top).sum(-1)
    torch.testing.assert_close(out.metrics["p_k"], pk)
    torch.testing.assert_close(out.metrics["pk_over_qk"], pk / qk)
    torch.testing.assert_close(out.loss, (logp.exp() * (logp - logq)).sum(-1))
    same = kl_with_support(k=4)(logits, ObjectiveInputs(torch.zeros(5, dtype=torch.long), TeacherScores(logprobs=logp)))
    torch.testing.assert_close(same.metrics["pk_over_qk"], torch.ones(5))


def test_evaluation_is_repeatable_and_leaves_the_training_rng_alone(tiny_dir, tmp_path):
    s = build_session(load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path, **{
        "model.teacher": tiny_dir / "teacher", "data.eval": tiny_dir / "train.jsonl", "run.eval_limit": 4})))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = evaluate_session(s, teacher_side=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate_session(s, teacher_side=True) == first
    assert 0.0 <= first["accuracy"] <= 1.0 and first["teacher_kl"] > 0 and first["teacher_nll"] > 0
    assert {"teacher_accuracy", "teacher_length_mean", "p_k", "q_k", "sample_entropy"} <= set(first)


def test_the_kl_of_a_teacher_that_is_the_student_is_zero(tiny_dir, tmp_path):
    s = build_session(load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path, **{
        "model.teacher": tiny_dir / "student", "data.pi": "", "data.pi_field": "none"})))
    from opdkit.engine.evaluate import _generate
    rollouts = _generate(s, s.items[:3], greedy=False)
    assert abs(teacher_kl(s, s.teacher, rollouts)) < 1e-6
