"""Shared builders for the tests: random logits, teacher scores, and objective inputs."""
from __future__ import annotations

import pytest
import torch

from opdkit.objectives.scores import ObjectiveInputs, TeacherScores


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


# ----------------------------------------------------------------------------- engine fixtures

@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny student (1 layer), teacher (2 layers) and datasets, saved as real HF checkpoints."""
    import json

    from opdkit.lab.tiny import build_tokenizer, save_tiny
    root = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()
    save_tiny(root / "student", layers=1, seed=0, tokenizer=tok)
    save_tiny(root / "teacher", layers=2, seed=1, tokenizer=tok)
    with open(root / "train.jsonl", "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"prompt": f"what is {i} plus 2?", "answer": str(i + 2),
                                 "response": f"the answer is {i + 2}.", "pi": "always answer in spanish."}) + "\n")
    return root


def engine_overrides(tiny_dir, out, **extra) -> list[str]:
    """key=value overrides for a fast 3-step run on the tiny pair."""
    values = {"model.student": tiny_dir / "student", "data.train": tiny_dir / "train.jsonl", "run.out": out,
              "optim.steps": 3, "optim.prompts_per_step": 4, "optim.micro_batch": 2, "rollout.max_new_tokens": 8,
              "optim.lr": 1e-3, "run.progress": False, "run.threads": 1, "run.save_every": 1}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def testbed(tmp_path_factory):
    """The tiny addition task with an SFT-trained teacher and the step-60 student (~4 s)."""
    from opdkit.lab.testbed import build_testbed
    return build_testbed(tmp_path_factory.mktemp("testbed"), students=(60,))
