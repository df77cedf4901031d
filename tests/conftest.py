"""Shared builders for the tests: random logits, teacher scores, and objective inputs."""
from __future__ import annotations

import pytest
import torch

from opdkit.scores import ObjectiveInputs, TeacherScores


def teacher_scores(teacher_logits: torch.Tensor, ids: torch.Tensor, k: int = 8) -> TeacherScores:
    """Everything a local teacher can report, from its logits (..., V)."""
    logq = torch.log_softmax(teacher_logits, -1)
    top = logq.topk(k, -1)
    return TeacherScores(logprobs=logq, topk_ids=top.indices, topk_logprobs=top.values,
                         sampled_logprobs=logq.gather(-1, ids.unsqueeze(-1)).squeeze(-1))


def full_inputs(teacher_logits: torch.Tensor, ids: torch.Tensor, k: int = 8, **extra) -> ObjectiveInputs:
    return ObjectiveInputs(ids, teacher_scores(teacher_logits, ids, k), **extra)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
