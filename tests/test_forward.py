"""The alignment convention and the forward passes of opdkit.models.forward on a tiny real HF model."""
from __future__ import annotations

import pytest
import torch

from opdkit.lab.tiny import build_model, build_tokenizer
from opdkit.models.forward import (
    StudentForward,
    gather_positions,
    model_head,
    pack,
    response_hidden,
    scoring_positions,
    student_head,
)
from opdkit.objectives.logprobs import selective_log_softmax
from opdkit.objectives.reduction import token_mean
from opdkit.objectives.scores import TeacherScores


@pytest.fixture(scope="module")
def model():
    return build_model(build_tokenizer(), layers=1, seed=0)


def test_scoring_positions_are_shifted_by_one():
    assert scoring_positions(3, 4).tolist() == [2, 3, 4, 5]        # output t scores token t + 1


def test_packed_nll_reproduces_the_hf_causal_lm_loss(model):
    """Output t scores token t+1: the NLL of the packed response tokens equals transformers' labels= loss."""
    prompts, responses = [[1, 5, 7, 9], [3, 4]], [[11, 12, 13], [14, 15, 16, 17, 18]]
    packed = pack(prompts, responses, pad_id=0)
    labels = packed.input_ids.clone()
    for i, p in enumerate(prompts):
        labels[i, :len(p)] = -100
    labels[packed.attention_mask == 0] = -100
    with torch.no_grad():
        hf = model(packed.input_ids, attention_mask=packed.attention_mask, labels=labels).loss
        logits = model_head(model, packed, model.config.vocab_size).logits(response_hidden(model, packed))
        ours = token_mean(-selective_log_softmax(logits, packed.response_ids), packed.response_mask)
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-6)


def test_student_forward_equals_the_plain_forward(model):
    packed = pack([[1, 5, 7], [2]], [[9, 10], [11, 12, 13]], pad_id=0)
    with torch.no_grad():
        head = student_head(StudentForward(model), packed, vocab=50)
        plain = model_head(model, packed, vocab=50)
        full = model(packed.input_ids, attention_mask=packed.attention_mask).logits
    torch.testing.assert_close(head.hidden, plain.hidden)
    assert head.weight.shape[0] == 50
    torch.testing.assert_close(head.logits(head.hidden), gather_positions(full, packed.positions)[..., :50],
                               rtol=1e-5, atol=1e-5)


def test_lazy_teacher_scores_resolve_to_the_log_softmax(model):
    packed = pack([[1, 5, 7]], [[9, 10, 11]], pad_id=0)
    with torch.no_grad():
        head = model_head(model, packed, vocab=model.config.vocab_size, temperature=2.0)
        full = model(packed.input_ids).logits[:, 2:5] / 2.0
    scores = TeacherScores(head=head)
    assert scores.available() == {"logprobs"}
    torch.testing.assert_close(scores.resolved().logprobs, torch.log_softmax(full, -1), rtol=1e-5, atol=1e-5)
    assert scores.flatten().rows(slice(1, 3)).resolved().logprobs.shape == (2, model.config.vocab_size)
