"""Teachers: who scores the student's responses, and what prompt they see.

A local teacher returns a `Head` (its hidden states at the response positions and its
lm-head), from which the chunked objective computes exact log q per chunk, so a full
(N, T, V) teacher tensor never exists. Both teachers render their prompt with the same
chat template call as the student, with privileged information (PI) added.

- ModelTeacher: a separate HF model (OPD).
- SelfTeacher: the student's own weights shown PI (OPSD): `frozen` (a copy of the initial
  weights; with LoRA, the base model with adapters disabled), `live` (the current weights,
  no gradient) or `ema` (an exponential moving average updated after each step).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from opdkit.data import Example, messages, render
from opdkit.logprobs import Head
from opdkit.packing import Packed, pack, response_hidden


@dataclass
class PromptRenderer:
    """Turns an example into prompt ids for one side (student: no PI; teacher: PI added)."""

    tokenizer: object
    system: str = ""
    fixed_pi: str = ""
    placement: str = "system"
    with_pi: bool = False

    def __call__(self, example: Example) -> list[int]:
        pi = (example.pi or self.fixed_pi) if self.with_pi else ""
        return render(self.tokenizer, messages(example.prompt, self.system, pi, self.placement))


def head_of(model, hidden: torch.Tensor, vocab: int, temperature: float = 1.0) -> Head:
    """The model's lm-head over the first `vocab` rows (pairs whose heads are padded differently)."""
    layer = model.get_output_embeddings()
    bias = None if layer.bias is None else layer.bias[:vocab]
    return Head(hidden, layer.weight[:vocab], bias, temperature)


class LocalTeacher:
    """Scoring shared by both teachers: forward its own prompt + the student's response."""

    def __init__(self, renderer: PromptRenderer, pad_id: int, vocab: int, temperature: float = 1.0):
        self.renderer, self.pad_id, self.vocab, self.temperature = renderer, pad_id, vocab, temperature

    def model(self):
        raise NotImplementedError

    def context(self):
        return contextlib.nullcontext()

    def score(self, examples: list[Example], responses: list[list[int]]) -> Head:
        prompts = [self.renderer(e) for e in examples]
        model = self.model()
        packed: Packed = pack(prompts, responses, self.pad_id, next(model.parameters()).device)
        with torch.no_grad(), self.context():
            hidden = response_hidden(model, packed)
            head = head_of(model, hidden, self.vocab, self.temperature)
            return Head(hidden, head.weight.detach(), None if head.bias is None else head.bias.detach(),
                        self.temperature)

    def after_step(self, student) -> None:
        """Called after each optimizer step (EMA teachers update here)."""

    def checkpoint_modules(self) -> dict:
        """Modules whose weights a checkpoint must hold to resume this teacher exactly."""
        return {}


class ModelTeacher(LocalTeacher):
    def __init__(self, model, renderer: PromptRenderer, pad_id: int, vocab: int, temperature: float = 1.0):
        super().__init__(renderer, pad_id, vocab, temperature)
        self._model = model.eval().requires_grad_(False)

    def model(self):
        return self._model


class SelfTeacher(LocalTeacher):
    """The student shown PI; `weights` is 'frozen', 'live' or 'ema'."""

    def __init__(self, student, renderer: PromptRenderer, pad_id: int, vocab: int, weights: str = "frozen",
                 ema_decay: float = 0.99, temperature: float = 1.0):
        super().__init__(renderer, pad_id, vocab, temperature)
        if weights not in ("frozen", "live", "ema"):
            raise ValueError(f"self-teacher weights must be frozen, live or ema, got {weights!r}")
        self.student, self.weights, self.decay = student, weights, ema_decay
        self.lora = hasattr(student, "disable_adapter")
        self.copy = None
        if weights == "ema" or (weights == "frozen" and not self.lora):
            self.copy = copy.deepcopy(student).eval().requires_grad_(False)

    def model(self):
        return self.copy if self.copy is not None else self.student

    def context(self):
        if self.weights == "frozen" and self.lora:
            return self.student.disable_adapter()    # base weights = the initial model
        return contextlib.nullcontext()

    @torch.no_grad()
    def after_step(self, student) -> None:
        if self.weights != "ema":
            return
        for mine, theirs in zip(self.copy.parameters(), student.parameters()):
            mine.lerp_(theirs.detach(), 1.0 - self.decay)

    def checkpoint_modules(self) -> dict:
        # The frozen copy is rebuilt from the initial weights on resume; only EMA moves.
        return {"teacher_ema": self.copy} if self.weights == "ema" else {}
