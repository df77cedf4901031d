"""engine/run_checkpoint: what the guard changed survives a checkpoint (RunState.changes ->
resumed_changes), and which config changes --resume accepts."""
from __future__ import annotations

import pytest

from opdkit.engine.config import load_config, save_config
from opdkit.engine.run_checkpoint import check_resume_config, resumed_changes
from opdkit.engine.runstate import RunState, bind_objective
from opdkit.errors import TrainingError

BASE = ["model.student=s", "model.teacher=t", "data.train=d.jsonl"]


def test_the_guards_changes_round_trip_through_a_checkpoints_state():
    state = RunState("topk_rkl_tail", bind_objective("topk_rkl_tail", {}, diagnostics=False), 8)
    assert resumed_changes({"rollbacks": 0, "changes": state.changes()}) == (0, 1.0, "", ())
    state.lr_scale, state.objective_name, state.switched = 0.25, "rkl", True
    state.dropped_teachers = ("peer", "tutor")
    saved = {"rollbacks": 2, "changes": state.changes()}
    assert resumed_changes(saved) == (2, 0.25, "rkl", ("peer", "tutor"))
    assert resumed_changes({}) == (0, 1.0, "", ())              # a checkpoint from before the guard existed


def test_resume_accepts_length_and_lr_changes_and_refuses_the_rest(tmp_path):
    save_config(load_config("distill", overrides=BASE + ["optim.steps=10"]), tmp_path / "config.yaml")
    history, changes = check_resume_config(load_config("distill", overrides=BASE + [
        "optim.steps=20", "optim.lr=5e-6", "run.progress=false"]), tmp_path)
    assert history == [] and changes == [{"step": -1, "key": "optim.lr", "old": 1e-5, "new": 5e-6}]
    with pytest.raises(TrainingError, match=r"\['rollout.max_new_tokens', 'objective.name'\] changed"):
        check_resume_config(load_config("distill", overrides=BASE + ["objective.name=rkl",
                                                                     "rollout.max_new_tokens=9"]), tmp_path)
    assert check_resume_config(load_config("distill", overrides=BASE), tmp_path / "nowhere") == ([], [])
