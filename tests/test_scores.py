"""Bad input gets a clear error naming the argument and what is expected."""
from __future__ import annotations

import pytest
import torch

from opdkit.objectives import group_advantages, make_objective
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores

V = 10


def _served(n=4, k=3):
    g = torch.Generator().manual_seed(0)
    logq = torch.log_softmax(torch.randn(n, V, generator=g), -1)
    top = logq.topk(k, -1)
    ids = torch.randint(0, V, (n,), generator=g)
    return ObjectiveInputs(ids, TeacherScores(topk_ids=top.indices, topk_logprobs=top.values,
                                              sampled_logprobs=logq.gather(-1, ids[:, None]).squeeze(-1)))


def test_full_vocabulary_objective_refuses_top_k_only_teacher():
    with pytest.raises(ValueError, match=r"'rkl' needs logprobs: full teacher log-probabilities.*support=teacher"):
        make_objective("rkl")(torch.randn(4, V), _served())


def test_student_support_refuses_top_k_only_teacher():
    with pytest.raises(ValueError, match="support='student' needs teacher log-probs at the student's top-K"):
        make_objective("topk_rkl_sg", k=3)(torch.randn(4, V), _served())


def test_k_above_what_a_served_teacher_returned_is_explained():
    with pytest.raises(ValueError, match="only its top-3.*max-logprobs"):
        make_objective("topk_rkl_sg", k=5, support="teacher")(torch.randn(4, V), _served(k=3))


def test_k_larger_than_vocabulary():
    inputs = ObjectiveInputs(torch.zeros(4, dtype=torch.long), TeacherScores(logprobs=torch.log_softmax(torch.randn(4, V), -1)))
    with pytest.raises(ValueError, match=r"k=20 is larger than the vocabulary \(10 tokens\)"):
        make_objective("topk_rkl_sg", k=20)(torch.randn(4, V), inputs)


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
        make_objective("jsd", beta=beta)


def test_teacher_shape_mismatch_names_the_argument():
    inputs = ObjectiveInputs(torch.zeros(4, dtype=torch.long), TeacherScores(logprobs=torch.zeros(4, V + 1)))
    with pytest.raises(ValueError, match=r"teacher.logprobs has shape \(4, 11\); expected \(4, 10\)"):
        make_objective("fkl")(torch.randn(4, V), inputs)


def test_ids_with_wrong_dtype_or_shape():
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        make_objective("sft")(torch.randn(4, V), ObjectiveInputs(torch.zeros(4)))
    with pytest.raises(ValueError, match=r"ids has shape \(5,\); expected \(4,\)"):
        make_objective("sft")(torch.randn(4, V), ObjectiveInputs(torch.zeros(5, dtype=torch.long)))


def test_integer_logits_rejected():
    with pytest.raises(TypeError, match="student logits must be a floating tensor"):
        make_objective("sft")(torch.zeros(4, V, dtype=torch.long), ObjectiveInputs(torch.zeros(4, dtype=torch.long)))


def test_unknown_objective_suggests_the_closest_name():
    with pytest.raises(ValueError, match="unknown objective 'topk_rkl_stopgrad'. Did you mean 'topk_rkl_sg'"):
        make_objective("topk_rkl_stopgrad")


def test_unknown_or_conflicting_option():
    with pytest.raises(ValueError, match="has no option 'temperature'"):
        make_objective("rkl", temperature=2.0)
    with pytest.raises(ValueError, match="fixes norm='none'"):
        make_objective("topk_rkl_unnorm", norm="stopgrad")
    with pytest.raises(ValueError, match="support must be one of"):
        make_objective("topk_rkl", support="both")


def test_grpo_without_advantages():
    with pytest.raises(ValueError, match="'grpo' needs advantages"):
        make_objective("grpo")(torch.randn(4, V), ObjectiveInputs(torch.zeros(4, dtype=torch.long)))


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), group_size=4)
