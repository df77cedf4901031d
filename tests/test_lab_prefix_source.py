"""The prefix-source experiment's judge applies the thresholds its docstring fixes, and its cells are the presets."""
from __future__ import annotations

from opdkit.engine.prefix import DECOUPLING_CELLS
from opdkit.lab.prefix_source import CELLS, judge


def _results(kl: dict, acc: dict) -> dict:
    return {name: [{"teacher_kl_end": kl[name], "accuracy_end": acc[name]}] * 3 for name in kl}


def test_judge_thresholds():
    acc = {"teacher_fkl": 0.9, "teacher_rkl": 0.85, "student_fkl": 0.82, "student_rkl": 0.8, "mix": 0.8}
    kl = {"teacher_fkl": 1.5, "teacher_rkl": 1.2, "student_fkl": 1.25, "student_rkl": 1.0, "mix": 1.1}
    verdict = judge(_results(kl, acc))
    assert verdict["H1"]["holds"] and verdict["H1"]["statistic"]["fkl"] == 1.2    # >= 1.1x for both directions
    assert verdict["H2"]["holds"]                                                  # spread 0.10
    assert verdict["H3"]["holds"]
    kl.update(teacher_rkl=1.05, mix=1.6)            # rkl ratio 1.05 < 1.1; mix above max 1.5 + 10% of 0.5
    acc.update(student_rkl=0.79)
    verdict = judge(_results(kl, acc))
    assert not verdict["H1"]["holds"] and not verdict["H2"]["holds"] and not verdict["H3"]["holds"]


def test_the_experiment_runs_the_four_presets_and_a_mixture():
    assert set(CELLS) == set(DECOUPLING_CELLS) | {"mix"}
    assert CELLS["mix"]["rollout.source"] == "mix" and CELLS["mix"]["objective.name"] == "kl_mix"
