"""RunState: what changes during a run, and the objective the guard may switch to."""
from __future__ import annotations

import pytest
import torch

from opdkit.engine.runstate import RunState, bind_objective
from opdkit.objectives import ObjectiveInputs, TeacherScores


def test_changes_hold_only_what_the_guard_changed():
    state = RunState("topk_rkl_unnorm", bind_objective("topk_rkl_unnorm", {"k": 4}, diagnostics=False), 16)
    assert state.changes() == {} and state.needs_teacher
    state.lr_scale = 0.25
    assert state.changes() == {"lr_scale": 0.25}
    state.objective_name, state.switched = "rkl", True
    assert state.changes() == {"lr_scale": 0.25, "objective": "rkl"}
    assert not RunState("sft", bind_objective("sft", {}, diagnostics=False), 16).needs_teacher


def test_a_switch_keeps_only_the_options_the_new_objective_takes():
    with pytest.raises(ValueError, match="has no option 'k'"):
        bind_objective("rkl", {"k": 4, "diagnostic_k": 3}, diagnostics=False)          # strict: the config's own
    objective = bind_objective("rkl", {"k": 4, "diagnostic_k": 3, "support": "teacher"}, diagnostics=True, strict=False)
    assert objective.options == {"diagnostic_k": 3}
    logits, logq = torch.randn(2, 6), torch.log_softmax(torch.randn(2, 6), -1)
    out = objective(logits, ObjectiveInputs(torch.tensor([1, 2]), TeacherScores(logprobs=logq)))
    assert "teacher_rank" in out.metrics                                                # diagnostics on
