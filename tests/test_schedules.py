"""Stage schedules: switch criteria, the entropy-gated length curriculum, teacher-aligned prompts."""
from __future__ import annotations

import pytest
import yaml
from test_recipe import base, quiet, write

from opdkit.engine.metrics import read_metrics
from opdkit.errors import ConfigError
from opdkit.recipes.recipe import build_stage_session, load_recipe, run_recipe, stage_config
from opdkit.recipes.schedules import Criterion, next_length, parse_length, plateaued


@pytest.mark.parametrize("current, entropy, expected", [
    (16, 0.9, 32),      # above the floor: grow by one step
    (16, 0.5, 32),      # at the floor counts as above
    (16, 0.49, 16),     # below the floor: hold
    (56, 2.0, 64),      # growth is capped at the maximum
    (64, 2.0, 64),      # at the maximum: hold
])
def test_entropy_gate(current, entropy, expected):
    assert next_length(current, entropy, floor=0.5, step=16, maximum=64) == expected


def test_plateau_and_thresholds():
    assert not plateaued([0.1, 0.2, 0.3], 2)                    # still improving
    assert plateaued([0.1, 0.3, 0.3, 0.2], 2)                   # best 0.3 not beaten for 2 evals
    assert not plateaued([0.1, 0.3, 0.3, 0.31], 2)              # beaten at the last eval
    assert plateaued([0.1, 0.3, 0.3, 0.31], 2, min_delta=0.05)  # but not by min_delta
    assert plateaued([1.0, 0.5, 0.6, 0.55], 2, mode="min")      # a loss that stopped falling
    assert not plateaued([0.3, 0.3], 2)                         # too few values to tell
    rows = [{"step": 0, "eval/accuracy": 0.9}, {"step": 5, "eval/accuracy": 0.4}, {"step": 6, "train/loss": 1.0}]
    assert Criterion("eval/accuracy", at_least=0.5).reason(rows) is None      # step 0 never ends a stage
    assert "0.4 >= 0.4" in Criterion("eval/accuracy", at_least=0.4).reason(rows)
    assert Criterion("eval/accuracy", at_most=0.3).reason(rows) is None


def test_bad_length_schedule_is_refused():
    with pytest.raises(ConfigError, match="start <= max"):
        parse_length("stage", {"start": 64, "max": 16, "entropy_floor": 0.1})
    with pytest.raises(ConfigError, match="needs start, max, entropy_floor"):
        parse_length("stage", {"start": 8})


@pytest.mark.parametrize("floor, lengths", [(0.0, [4, 6, 6, 8, 8, 8]), (1e6, [4, 4, 4, 4, 4, 4])])
def test_length_curriculum_in_a_stage_and_on_resume(tiny_dir, tmp_path, monkeypatch, floor, lengths):
    stage = {"name": "opd", "kind": "distill", "teacher": str(tiny_dir / "teacher"),
             "schedule": {"length": {"start": 4, "step": 2, "max": 8, "entropy_floor": floor, "every": 2}}}
    path = write(tmp_path, tiny_dir, [stage], **{"optim.steps": 6})
    import opdkit.engine.runner as runner
    real = runner.train_step
    calls = {"n": 0}

    def crash_at_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(runner, "train_step", crash_at_four)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(path), echo=quiet)
    monkeypatch.setattr(runner, "train_step", real)
    run_recipe(load_recipe(path), resume=True, echo=quiet)   # resumes after step 3 with the length of step 3
    rows = read_metrics(tmp_path / "run" / "opd" / "metrics.jsonl")
    assert [r["schedule/max_new_tokens"] for r in rows] == lengths
    assert [r["step"] for r in rows if "schedule/heldout_entropy" in r] == [2, 4, 6]
    assert all(r["rollout/length_mean"] <= r["schedule/max_new_tokens"] for r in rows)
    # the length in force at each step is the one set after the step before: step 1 samples 4 tokens at most
    assert max(r["rollout/length_mean"] for r in rows[:2]) <= 4


def test_teacher_aligned_prompts_use_the_teachers_template(tiny_dir, tmp_path):
    from opdkit.lab.tiny import build_tokenizer, save_tiny
    other = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + ': ' + message['content'] + "
             "'<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant: ' }}{% endif %}")
    save_tiny(tmp_path / "teacher", layers=2, seed=1, tokenizer=build_tokenizer(template=other))
    stages = [{"name": name, "kind": "distill", "teacher": str(tmp_path / "teacher"), "prompts": prompts,
               "config": {"model.teacher_template": "teacher"} if prompts == "student" else {}}
              for name, prompts in (("plain", "student"), ("aligned", "teacher"))]
    recipe = load_recipe(write(tmp_path, tiny_dir, stages, **{"data.pi_field": "none"}))
    plain, aligned = (build_stage_session(stage_config(recipe, st), st) for st in recipe.stages)
    for s in (plain, aligned):
        assert len(s.items) == 12
    teacher_view = [s.teacher.renderer(it.example) for s, it in ((aligned, it) for it in aligned.items)]
    assert [it.prompt_ids for it in aligned.items] == teacher_view          # student and teacher see one prompt
    assert [it.prompt_ids for it in plain.items] != teacher_view            # without the option they differ
    bad = load_recipe(write(tmp_path, tiny_dir, [{"name": "s", "kind": "sft", "prompts": "teacher"}], name="bad.yaml"))
    with pytest.raises(ConfigError, match="separate teacher"):
        build_stage_session(stage_config(bad, bad.stages[0]), bad.stages[0])


def test_recipe_file_round_trip_keeps_base_out_of_the_stage(tiny_dir, tmp_path):
    """A stage's config is base + its own keys; a sibling's keys do not leak into it."""
    stages = [{"name": "a", "kind": "sft", "config": {"optim": {"lr": 0.5}}}, {"name": "b", "kind": "sft"}]
    recipe = load_recipe(write(tmp_path, tiny_dir, stages))
    assert stage_config(recipe, recipe.stages[0]).optim.lr == 0.5
    assert stage_config(recipe, recipe.stages[1]).optim.lr == base(tiny_dir)["optim.lr"]
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["stages"][1] == {"name": "b", "kind": "sft"}
