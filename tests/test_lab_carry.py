"""The carry-addition task (C4's testbed) and Qwen2-config tiny models trained by the engine."""
from __future__ import annotations

import json
import random

import pytest
import torch

from opdkit.lab.carry import carry_items, carry_trace
from opdkit.lab.tiny import build_model, build_tokenizer, save_tiny
from opdkit.tasks.rewards import numeric_reward


def test_carry_trace_writes_columns_right_to_left_with_carries():
    assert carry_trace(47, 38) == "7+8=15 4+3+1=8 = 85"           # carry into the tens
    assert carry_trace(67, 58) == "7+8=15 6+5+1=12 = 125"         # and out of the last column
    assert carry_trace(12, 71) == "2+1=3 1+7=8 = 83"              # no carry at all
    assert carry_trace(905, 7) == "5+7=12 0+0+1=1 9+0=9 = 912"    # operands of different lengths


def test_carry_trace_answer_is_the_sum_for_random_operands():
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.randint(0, 9999), rng.randint(0, 9999)
        assert numeric_reward(carry_trace(a, b), str(a + b)) == 1.0


def test_carry_items_are_distinct_and_mostly_carry():
    rows = carry_items(60, seed=3)
    assert len({r["prompt"] for r in rows}) == 60
    assert sum(r["carry"] for r in rows) >= 30
    assert all(r["response"].endswith(f"= {r['answer']}") for r in rows)
    assert carry_items(60, seed=3) == rows and carry_items(60, seed=4) != rows


def test_carry_answers_are_many_tokens():
    tok = build_tokenizer()
    lengths = [len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in carry_items(20, seed=0)]
    assert min(lengths) >= 14                     # so 25% of an answer is several tokens


def test_tiny_arch_is_checked_and_qwen2_is_a_qwen2():
    tok = build_tokenizer()
    assert type(build_model(tok, layers=1, arch="qwen2")).__name__ == "Qwen2ForCausalLM"
    with pytest.raises(ValueError, match="arch must be one of"):
        build_model(tok, arch="gpt2")


def test_engine_trains_a_qwen2_tiny_model(tmp_path):
    """SFT through the real loop lowers a Qwen2 student's loss; an OPD step toward a Qwen2 teacher moves it."""
    from transformers import AutoModelForCausalLM

    from opdkit.engine.config import load_config
    from opdkit.engine.runner import run
    tok = build_tokenizer()
    save_tiny(tmp_path / "student", layers=1, hidden=32, seed=0, tokenizer=tok, arch="qwen2")
    save_tiny(tmp_path / "teacher", layers=1, hidden=32, seed=1, tokenizer=tok, arch="qwen2")
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in carry_items(16, seed=0)))
    common = [f"data.train={tmp_path / 'task.jsonl'}", "optim.prompts_per_step=8", "optim.micro_batch=8",
              "rollout.max_new_tokens=4", "run.progress=false", "guard.enabled=false", "run.save_every=1000", "run.threads=1"]
    rows = run(load_config("sft", overrides=[f"model.student={tmp_path / 'student'}", f"run.out={tmp_path / 'sft'}",
                                             "optim.steps=20", "optim.lr=3e-3", *common]))
    first, last = [r["train/loss"] for r in rows[:3]], [r["train/loss"] for r in rows[-3:]]
    assert sum(last) < 0.7 * sum(first)
    before = {n: p.clone() for n, p in AutoModelForCausalLM.from_pretrained(tmp_path / "student").named_parameters()}
    cfg = load_config("distill", overrides=[f"model.student={tmp_path / 'student'}", f"model.teacher={tmp_path / 'teacher'}",
                                            f"run.out={tmp_path / 'opd'}", "optim.steps=1", "optim.lr=1e-2", *common])
    from opdkit.engine.session import build_session
    s = build_session(cfg)
    assert type(s.student).__name__ == "Qwen2ForCausalLM"
    run(cfg, session=s)
    moved = [n for n, p in s.student.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert moved
