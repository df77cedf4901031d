"""engine/train: which tokens carry loss (the step's token count), rewards and advantages, the settings
read from a config, and sampling that depends on the step's salt and a response's global index only.
(Token-exact accumulation and chunked == plain are in test_engine.py.)"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import engine_overrides

from opdkit.engine.config import load_config
from opdkit.engine.runstate import initial_state
from opdkit.engine.session import build_session
from opdkit.engine.train import StepSettings, advantages_for, answer_rewards, collect, loss_mask
from opdkit.models.multiteacher import MultiTeacher
from opdkit.models.rollout import Rollouts
from opdkit.tasks.data import Example


def _rollouts(responses, teachers=None, answers=None):
    n = len(responses)
    meta = [Example("p", answer=(answers or [None] * n)[i], teacher=(teachers or [None] * n)[i]) for i in range(n)]
    return Rollouts([[1]] * n, responses, [torch.zeros(len(r)) for r in responses], [True] * n, meta=meta)


def test_the_loss_mask_masks_first_special_tokens_and_a_dropped_teachers_rows_and_counts_the_rest():
    responses = [[5, 9, 9, 4], [9, 3], [7, 8, 9]]
    settings = SimpleNamespace(mask_special=True, mode="distill")
    plain = SimpleNamespace(report=SimpleNamespace(masked_special_ids=[]), teacher=None)
    assert loss_mask(plain, settings, _rollouts(responses)) == (None, 0, 9)
    special = SimpleNamespace(report=SimpleNamespace(masked_special_ids=[9]), teacher=None)
    keep, masked, tokens = loss_mask(special, settings, _rollouts(responses))
    assert keep.tolist() == [[1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 0, 1]] and (masked, tokens) == (3, 6)
    teacher = MultiTeacher({"a": SimpleNamespace(provides="full"), "b": SimpleNamespace(provides="full")}, "route")
    teacher.drop(("b",))
    routed = SimpleNamespace(report=special.report, teacher=teacher)
    keep, masked, tokens = loss_mask(routed, settings, _rollouts(responses, teachers=["a", "b", "a"]))
    assert keep[1].tolist() == [0, 0, 0, 0] and (masked, tokens) == (3, 5)          # row 1's 2 tokens left out
    off = SimpleNamespace(mask_special=False, mode="distill")
    assert loss_mask(special, off, _rollouts(responses))[1:] == (0, 9)


def test_rewards_need_every_answer_and_only_grpo_gets_advantages():
    rollouts = _rollouts([[1], [2], [3], [4]], answers=["5", "6", "5", "6"])
    assert answer_rewards(rollouts, ["5", "no", "it is 5", "6"], "numeric") == [1.0, 0.0, 1.0, 1.0]
    assert answer_rewards(_rollouts([[1], [2]], answers=["5", None]), ["5", "5"], "numeric") is None
    grpo = SimpleNamespace(mode="grpo", group=2)
    adv, metrics = advantages_for(grpo, [1.0, 0.0, 1.0, 1.0])
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])                      # centred per group of 2
    assert metrics == pytest.approx({"reward/mean": 0.75, "reward/std": 0.4330127})
    assert advantages_for(SimpleNamespace(mode="distill", group=1), [1.0, 0.0]) == (None, {})


def test_step_settings_are_read_once_from_the_config():
    base = ["model.student=s", "data.train=d.jsonl", "rollout.samples_per_prompt=4"]
    sft = StepSettings.from_config(load_config("sft", overrides=base))
    assert sft.group == 1 and sft.student_fraction == 1.0 and sft.mode == "sft"     # sft: one target per prompt
    mix = StepSettings.from_config(load_config("distill", overrides=base + [
        "model.teacher=t", "rollout.source=mix", "rollout.student_fraction=0.25", "run.hedge_words=[hmm]"]))
    assert (mix.group, mix.student_fraction, mix.hedge_words) == (4, 0.25, ("hmm",))


def test_a_response_depends_on_the_salt_and_its_global_index_only(tiny_dir, tmp_path):
    cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path, **{"model.teacher": tiny_dir / "teacher"}))
    s, c = build_session(cfg), StepSettings.from_config(cfg)
    n = initial_state(cfg).max_new_tokens
    whole = collect(s, c, s.items[:4], n, salt=5, first=0)
    second_half = collect(s, c, s.items[2:4], n, salt=5, first=2)      # micro_batch 2: the same chunk seed
    assert second_half.response_ids == whole.response_ids[2:]
    assert collect(s, c, s.items[:4], n, salt=5, first=0).response_ids == whole.response_ids
    other = [collect(s, c, s.items[:4], n, salt=salt, first=0).response_ids for salt in (6, 7, 8)]
    assert any(o != whole.response_ids for o in other)
