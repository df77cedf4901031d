"""engine/session: what a session is built from, and the refusals that need the loaded models or data."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import engine_overrides

from opdkit.engine.config import load_config
from opdkit.engine.session import build_session, prepare_items
from opdkit.errors import ConfigError
from opdkit.models.teachers import PromptRenderer
from opdkit.tasks.data import Example


def _session(tiny_dir, out, mode="distill", **extra):
    return build_session(load_config(mode, overrides=engine_overrides(tiny_dir, out, **extra)))


def test_a_distill_session_holds_the_pair_its_prompts_and_the_student_samples(tiny_dir, tmp_path):
    s = _session(tiny_dir, tmp_path, **{"model.teacher": tiny_dir / "teacher"})
    assert s.vocab == len(s.tokenizer) and len(s.items) == 12 and s.skipped_prompts == 0
    assert s.items[0].prompt_ids == s.student_prompt(s.items[0].example)          # the student's prompt: no PI
    assert s.teacher.renderer(s.items[0].example) != s.items[0].prompt_ids        # the teacher's has the PI
    assert s.rollout_model() is s.student and s.teacher.model() is not s.student


def test_a_low_precision_sampler_copy_follows_the_student(tiny_dir, tmp_path):
    s = _session(tiny_dir, tmp_path, **{"model.teacher": tiny_dir / "teacher", "rollout.sampler_dtype": "bfloat16"})
    copy = s.rollout_model()
    assert copy is not s.student and next(copy.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        next(s.student.parameters()).add_(1.0)
    synced = next(s.rollout_model().parameters())
    torch.testing.assert_close(synced.float(), next(s.student.parameters()).bfloat16().float())


def test_prepare_items_counts_the_prompts_over_the_limit(tiny_dir):
    from opdkit.models.loading import load_tokenizer
    render = PromptRenderer(load_tokenizer(str(tiny_dir / "student")))
    examples = [Example("hi"), Example("what is " * 40)]
    limit = len(render(examples[0])) + 2
    items, skipped = prepare_items(examples, render, limit, "skip")
    assert [it.example for it in items] == examples[:1] and skipped == 1
    items, skipped = prepare_items(examples, render, limit, "truncate")
    assert skipped == 0 and len(items[1].prompt_ids) == limit


def test_refusals_that_need_the_models_or_the_data(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="objective 'rkl' needs a teacher: set model.teacher"):
        _session(tiny_dir, tmp_path / "a", "sft", **{"objective.name": "rkl"})
    data = tmp_path / "no_pi.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(3)))
    with pytest.raises(ConfigError, match="no example in .*no_pi.jsonl has privileged information"):
        _session(tiny_dir, tmp_path / "b", "self-distill", **{"data.train": data, "data.pi_field": "pi"})
