"""rollout.source = student | teacher | mix: draws, teacher-written rows, their log-probs and masks, refusals."""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import engine_overrides

from opdkit.engine.config import load_config
from opdkit.engine.prefix import DECOUPLING_CELLS, draw_student_rows
from opdkit.engine.runner import run
from opdkit.engine.runstate import initial_state
from opdkit.engine.session import build_session
from opdkit.engine.train import StepSettings, collect, micro_batch_backward
from opdkit.models.loading import load_model

REPO = Path(__file__).resolve().parents[1]


def test_mix_fraction_matches_over_many_draws_and_is_seeded():
    n, fraction = 20000, 0.3
    draws = draw_student_rows(salt=7, first=0, n=n, fraction=fraction)
    sigma = (fraction * (1 - fraction) / n) ** 0.5
    assert abs(sum(draws) / n - fraction) < 5 * sigma
    assert draws == draw_student_rows(7, 0, n, fraction)                  # same seed, same draws
    assert draws != draw_student_rows(8, 0, n, fraction)                  # another step's salt, other draws
    # Two ranks (global indices 0.. and 100..) draw different rows, and a rank's draws are the
    # global draws at its indices: a response's source does not depend on which rank drew it.
    rank0, rank1 = draw_student_rows(7, 0, 100, fraction), draw_student_rows(7, 100, 100, fraction)
    assert rank0 != rank1 and rank0 + rank1 == draws[:200]
    assert draw_student_rows(7, 0, 50, 0.0) == [False] * 50 and draw_student_rows(7, 0, 50, 1.0) == [True] * 50


def _session(tiny_dir, out, **extra):
    values = {"model.teacher": tiny_dir / "teacher", "objective.options": "{}", **extra}
    cfg = load_config("distill", overrides=engine_overrides(tiny_dir, out, **values))
    return build_session(cfg), StepSettings.from_config(cfg), initial_state(cfg)


def _teacher_logits(teacher, prompt: list[int], response: list[int]) -> torch.Tensor:
    """The teacher's logits scoring each response token, from a plain forward (no opdkit packing)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits[0].float()
    return logits[len(prompt) - 1:len(prompt) - 1 + len(response)]


def test_teacher_rows_are_sampled_at_temperature_with_honest_logprobs(tiny_dir, tmp_path):
    s, c, state = _session(tiny_dir, tmp_path / "t", **{"rollout.source": "teacher", "rollout.temperature": 0.7})
    assert c.student_fraction == 0.0
    rollouts = collect(s, c, s.items[:4], state.max_new_tokens, salt=11, first=0)
    assert rollouts.from_student == [False] * 4
    assert rollouts.prompt_ids == [it.prompt_ids for it in s.items[:4]]          # the student sees its own prompt
    teacher = load_model(str(tiny_dir / "teacher"), "float32")
    for it, response, logmu in zip(s.items[:4], rollouts.response_ids, rollouts.sampler_logprobs):
        teacher_prompt = s.teacher.renderer(it.example)
        assert teacher_prompt != it.prompt_ids                   # the teacher's prompt carries the PI
        logq = F.log_softmax(_teacher_logits(teacher, teacher_prompt, response) / 0.7, -1)
        expected = logq.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
        torch.testing.assert_close(logmu, expected, rtol=1e-4, atol=1e-4)   # the behaviour policy is the teacher
    again = collect(s, c, s.items[:4], state.max_new_tokens, salt=11, first=0)
    other = collect(s, c, s.items[:4], state.max_new_tokens, salt=12, first=0)
    assert again.response_ids == rollouts.response_ids                    # seeded
    assert other.response_ids != rollouts.response_ids                    # sampled, not greedy


def test_teacher_source_forward_kl_step_equals_supervised_kd(tiny_dir, tmp_path):
    """Teacher prefixes + FKL = KD: sum over the teacher's response tokens of KL(q || p), token mean."""
    s, c, state = _session(tiny_dir, tmp_path / "kd", **{"rollout.source": "teacher", "objective.name": "fkl",
                                                        "objective.mask_special": False})
    rollouts = collect(s, c, s.items[:3], state.max_new_tokens, salt=3, first=0)
    tokens = torch.tensor(float(sum(len(r) for r in rollouts.response_ids)))
    s.student.zero_grad()
    result, mask = micro_batch_backward(s, c, state, rollouts, slice(0, 3), None, None, tokens)
    teacher, student = load_model(str(tiny_dir / "teacher"), "float32"), load_model(str(tiny_dir / "student"), "float32")
    total = 0.0
    for it, response in zip(s.items[:3], rollouts.response_ids):
        logq = F.log_softmax(_teacher_logits(teacher, s.teacher.renderer(it.example), response), -1)
        ids = torch.tensor([it.prompt_ids + response])
        logits = student(input_ids=ids).logits[0, len(it.prompt_ids) - 1:len(it.prompt_ids) - 1 + len(response)]
        logp = F.log_softmax(logits.float(), -1)
        total = total + (logq.exp() * (logq - logp)).sum()
    expected = total / tokens
    expected.backward()
    assert mask.sum() == tokens                                       # every response token and nothing else
    torch.testing.assert_close(result.loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    hand = dict(student.named_parameters())
    for name, p in s.student.named_parameters():
        torch.testing.assert_close(p.grad, hand[name].grad, rtol=1e-4, atol=1e-6)


def test_mix_run_logs_the_fraction_and_resumes_exactly(tiny_dir, tmp_path):
    extra = {"model.teacher": tiny_dir / "teacher", "rollout.source": "mix", "rollout.student_fraction": 0.5,
             "optim.prompts_per_step": 8, "optim.micro_batch": 4, "objective.name": "kl_mix",
             "objective.options": "{lam: 0.5}", "guard.enabled": False}
    full = run(load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "full", **extra)))
    fractions = [row["rollout/student_fraction"] for row in full]
    assert all(f * 8 == round(f * 8) for f in fractions) and 0.0 < sum(fractions) / len(fractions) < 1.0
    part = engine_overrides(tiny_dir, tmp_path / "part", **{**extra, "optim.steps": 2})
    run(load_config("distill", overrides=part))
    resumed = run(load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "part", **extra)), resume=True)
    assert [r["rollout/student_fraction"] for r in resumed][-1] == fractions[-1]
    assert resumed[-1]["train/loss"] == pytest.approx(full[-1]["train/loss"], rel=1e-5, abs=1e-7)


def _opdkit(*args):
    return subprocess.run([sys.executable, "-m", "opdkit.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("overrides, says", [
    (["rollout.source=teacher", "objective.name=sampled_rkl", "objective.options={clip: 0.2}"],
     "clips the importance ratio"),
    (["rollout.source=mix", "rollout.student_fraction=1.5"], "rollout.student_fraction must lie in"),
    (["rollout.source=mix", "teacher.url=http://localhost:1/v1", "objective.name=topk_rkl_tail",
      "objective.options={support: teacher}"], "needs a local teacher"),
])
def test_bad_source_is_refused_at_config_load_through_the_cli(tiny_dir, tmp_path, overrides, says):
    out = _opdkit("distill", *engine_overrides(tiny_dir, tmp_path / "r", **{"model.teacher": tiny_dir / "teacher"}),
                  *overrides)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opdkit: error:") and says in lines[0]
    if "clip" in says:
        assert "Objectives that learn from teacher-sampled responses: rkl, fkl" in lines[0]
    assert not (tmp_path / "r").exists()                       # nothing was loaded or written


def test_grpo_and_sft_refuse_teacher_prefixes():
    for mode, fix in (("grpo", "rollout.source=student"), ("sft", "teacher.sft_traces=teacher")):
        with pytest.raises(ValueError, match=re.escape(fix)):
            load_config(mode, overrides=["model.student=x", "data.train=x", "rollout.source=teacher",
                                         "rollout.samples_per_prompt=2"])


def test_decoupling_presets_are_documented_and_load(tiny_dir, tmp_path):
    doc = (REPO / "examples" / "decoupling.md").read_text()
    for name, cell in DECOUPLING_CELLS.items():
        overrides = [f"{k}={v}" for k, v in cell.items() if k != "why"]
        assert name in doc and " ".join(overrides) in doc
        cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / name, **{
            "model.teacher": tiny_dir / "teacher"}) + overrides)
        assert (cfg.rollout.source, cfg.objective_name) == (cell["rollout.source"], cell["objective.name"])
    assert "rollout.source=mix rollout.student_fraction=" in doc


def test_decode_batch_rows_do_not_depend_on_which_rank_or_call_drew_them(tiny_dir, tmp_path):
    """rollout.decode_batch: rows seeded by (salt, global index). Two 'ranks' (items 0-1 and 2-3,
    first = 0 and 2) decoding 1 row per call give the rows one process decodes 4 per call."""
    s, c, state = _session(tiny_dir, tmp_path / "d", **{"rollout.decode_batch": 4})
    whole = collect(s, c, s.items[:4], state.max_new_tokens, salt=11, first=0)
    one_by_one = replace(c, decode_batch=1)
    ranks = [collect(s, one_by_one, s.items[:2], state.max_new_tokens, salt=11, first=0),
             collect(s, one_by_one, s.items[2:4], state.max_new_tokens, salt=11, first=2)]
    assert ranks[0].response_ids + ranks[1].response_ids == whole.response_ids
    assert [r.example for r in s.items[:4]] == whole.meta
    other = collect(s, c, s.items[:4], state.max_new_tokens, salt=12, first=0)
    assert other.response_ids != whole.response_ids                         # another step's salt, other rows
