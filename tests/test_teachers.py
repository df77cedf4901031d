"""models/teachers: a local teacher's lazy scores equal a plain HF forward of (its prompt + the
response), temperature included; what each teacher renders, checkpoints and refuses."""
from __future__ import annotations

import pytest
import torch

from opdkit.lab.tiny import build_model, build_tokenizer
from opdkit.models.teachers import ModelTeacher, PromptRenderer, SelfTeacher
from opdkit.tasks.data import Example, messages, render


@pytest.fixture(scope="module")
def pair():
    tok = build_tokenizer()
    return tok, build_model(tok, layers=2, seed=3)


def _direct(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """log q(. | prompt, response[:j]) for j = 0 .. len(response)-1, from one unpadded forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float() / temperature
    return torch.log_softmax(logits[len(prompt) - 1:len(prompt) + len(response) - 1], -1)


def test_model_teacher_scores_equal_a_plain_forward_of_its_own_prompt(pair):
    tok, model = pair
    renderer = PromptRenderer(tok, system="be brief.", fixed_pi="always answer in spanish.", with_pi=True)
    teacher = ModelTeacher(model, renderer, tok.pad_token_id, len(tok), temperature=0.5)
    examples = [Example("what is 2 plus 3?"), Example("hola", pi="say 5.")]       # different prompt lengths
    responses = [tok("the answer is 5.")["input_ids"], tok("cinco")["input_ids"]]
    got = teacher.score(examples, responses).resolved().logprobs
    for i, (e, r) in enumerate(zip(examples, responses)):
        torch.testing.assert_close(got[i, :len(r)], _direct(model, renderer(e), r, 0.5), rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.model().parameters()) and not teacher.model().training


def test_the_renderer_adds_pi_only_for_the_teacher_and_an_examples_own_pi_wins(pair):
    tok, _ = pair
    example, plain = Example("q?", pi="own rule"), Example("q?")
    student = PromptRenderer(tok, fixed_pi="fixed rule")
    teacher = PromptRenderer(tok, fixed_pi="fixed rule", with_pi=True)
    assert student(example) == render(tok, messages("q?"))
    assert teacher(example) == render(tok, messages("q?", pi="own rule"))
    assert teacher(plain) == render(tok, messages("q?", pi="fixed rule"))
    user = PromptRenderer(tok, fixed_pi="fixed rule", placement="user", with_pi=True)
    assert user(plain) == render(tok, messages("q?", pi="fixed rule", pi_placement="user")) != teacher(plain)


def test_self_teacher_weights_decide_its_model_and_what_a_checkpoint_holds(pair):
    tok, model = pair
    renderer = PromptRenderer(tok, with_pi=True)

    def teacher(weights):
        return SelfTeacher(model, renderer, tok.pad_token_id, len(tok), weights=weights)
    assert teacher("live").model() is model and teacher("live").checkpoint_modules() == {}
    frozen = teacher("frozen")
    assert frozen.model() is not model and frozen.checkpoint_modules() == {}       # rebuilt from the start weights
    ema = teacher("ema")
    assert list(ema.checkpoint_modules()) == ["teacher_ema"] and ema.checkpoint_modules()["teacher_ema"] is ema.model()
    with pytest.raises(ValueError, match="must be frozen, live or ema, got 'emma'"):
        teacher("emma")
