"""Held-out metrics of `opdkit.engine.evaluate`: P_K/Q_K beside the KL, the teacher's NLL of greedy answers."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import engine_overrides, full_inputs

from opdkit.engine.config import load_config
from opdkit.engine.evaluate import _generate, eval_items, evaluate_session, kl_with_support, teacher_nll
from opdkit.engine.session import build_session


def test_kl_with_support_matches_hand_values():
    # p = (0.5, 0.3, 0.1, 0.1), q = (0.2, 0.2, 0.3, 0.3); the student's top-2 is {0, 1}:
    # P_K = 0.8, Q_K = 0.4, P_K/Q_K = 2; KL(p || q) = sum p log(p/q).
    p, q = torch.tensor([[0.5, 0.3, 0.1, 0.1]]), torch.tensor([[0.2, 0.2, 0.3, 0.3]])
    out = kl_with_support(k=2)(p.log(), full_inputs(q.log(), torch.tensor([0]), k=2))
    kl = sum(a * math.log(a / b) for a, b in zip(p[0].tolist(), q[0].tolist()))
    torch.testing.assert_close(out.loss, torch.tensor([kl]))
    for key, value in {"p_k": 0.8, "q_k": 0.4, "pk_over_qk": 2.0}.items():
        torch.testing.assert_close(out.metrics[key], torch.tensor([value]))


def _session(tiny_dir, tmp_path, teacher):
    cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{
        "model.teacher": tiny_dir / teacher, "data.eval": tiny_dir / "train.jsonl", "run.eval_limit": 3,
        "rollout.max_new_tokens": 6}))
    return build_session(cfg)


def test_teacher_nll_is_the_teachers_mean_nll_of_the_greedy_tokens(tiny_dir, tmp_path):
    s = _session(tiny_dir, tmp_path, "teacher")
    items = eval_items(s)
    greedy = _generate(s, items, greedy=True)
    total, tokens = 0.0, 0
    teacher = s.teacher.model()
    for item, response in zip(items, greedy.response_ids, strict=True):
        prompt = s.teacher.renderer(item.example)
        with torch.no_grad():
            logp = teacher(input_ids=torch.tensor([prompt + response])).logits[0].log_softmax(-1)
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)   # logits at t predict t + 1
        total -= float(logp[positions, torch.tensor(response)].sum())
        tokens += len(response)
    assert tokens > 0
    assert teacher_nll(s, s.teacher, greedy) == pytest.approx(total / tokens, rel=1e-5)


def test_eval_reports_support_mass_and_is_zero_against_itself(tiny_dir, tmp_path):
    other = evaluate_session(_session(tiny_dir, tmp_path, "teacher"))
    assert other["teacher_kl"] > 0.01 and other["teacher_nll"] > 0
    assert 0 < other["p_k"] <= 1 and 0 < other["q_k"] <= 1
    assert 0 <= other["repeat_ratio"] <= 1 and 0 <= other["sample_repeat_ratio"] <= 1
    same = evaluate_session(_session(tiny_dir, tmp_path, "student"))
    assert same["teacher_kl"] == pytest.approx(0, abs=1e-4)          # batched padding: ~1e-5 noise
    assert same["pk_over_qk"] == pytest.approx(1, abs=1e-3) and same["p_k"] == pytest.approx(same["q_k"], abs=1e-3)
    assert same["sample_entropy"] > 0 and same["sample_length_mean"] > 0
