"""Teachers: who scores the student's responses, and what prompt they see.

Every teacher answers `score(examples, responses) -> TeacherScores` at the student's
response positions, over the student's vocabulary (`Teacher`, the interface). What it can
provide is declared in `provides` ("full": log q at any id; "top-k": its top-k and the
sampled token's log q), and the objective's needs are checked against it when the run is
built (`opdkit.objectives.check_teacher`). A local teacher's scores are lazy: they carry
its hidden states at the response positions and its lm-head (`TeacherScores.head`), from
which the chunked objective computes exact log q per chunk, so a full (N, T, V) teacher
tensor never exists. Local teachers render their prompt with the same chat template call
as the student, with privileged information (PI) added. A served teacher
(`opdkit.models.served.ServedTeacher`) implements the same interface.

- ModelTeacher: a separate HF model (OPD).
- SelfTeacher: the student's own weights shown PI (OPSD): `frozen` (a copy of the initial
  weights; with LoRA, the base model with adapters disabled), `live` (the current weights,
  no gradient) or `ema` (an exponential moving average updated after each step).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Protocol

import torch

from opdkit.models.forward import Packed, model_head, pack
from opdkit.objectives.scores import Head, TeacherScores
from opdkit.tasks.data import Example, messages, render


@dataclass
class PromptRenderer:
    """Turns an example into prompt ids for one side (student: no PI; teacher: PI added)."""

    tokenizer: object
    system: str = ""
    fixed_pi: str = ""
    placement: str = "system"
    with_pi: bool = False
    plain: bool = False           # plain text even if the tokenizer has a chat template (a base model)

    def __call__(self, example: Example) -> list[int]:
        pi = (example.pi or self.fixed_pi) if self.with_pi else ""
        return render(self.tokenizer, messages(example.prompt, self.system, pi, self.placement), self.plain)


class Teacher(Protocol):
    """What the engine, evaluation and probes ask of any teacher.

    A future teacher (a mixture of teachers, one with another tokenizer) implements these
    calls and returns its scores at the student's positions and vocabulary.
    """

    provides: str                 # "full" (log q at any id) or "top-k" (top-k + the sampled token)
    renderer: "PromptRenderer"    # its prompt for an example (PI added)

    def score(self, examples: list[Example], responses: list[list[int]]) -> TeacherScores: ...

    def model(self) -> torch.nn.Module | None:
        """Its local model (writing SFT traces, answering in eval), or None (served)."""

    def context(self) -> contextlib.AbstractContextManager:
        """Entered around its model's forwards (a LoRA self-teacher disables the adapters)."""

    def after_step(self, student) -> None:
        """Called after each optimizer step (EMA teachers update here)."""

    def checkpoint_modules(self) -> dict:
        """Modules whose weights a checkpoint must hold to resume this teacher exactly."""


class LocalTeacher:
    """Scoring shared by both local teachers: forward its own prompt + the student's response."""

    provides = "full"

    def __init__(self, renderer: PromptRenderer, pad_id: int, vocab: int, temperature: float = 1.0):
        self.renderer, self.pad_id, self.vocab, self.temperature = renderer, pad_id, vocab, temperature

    def model(self):
        raise NotImplementedError

    def context(self):
        return contextlib.nullcontext()

    def score(self, examples: list[Example], responses: list[list[int]]) -> TeacherScores:
        """Lazy full scores: the hidden states (N, R, H) at the response positions and the lm-head."""
        prompts = [self.renderer(e) for e in examples]
        model = self.model()
        packed: Packed = pack(prompts, responses, self.pad_id, next(model.parameters()).device)
        with torch.no_grad(), self.context():
            head = model_head(model, packed, self.vocab, self.temperature)
            return TeacherScores(head=Head(head.hidden, head.weight.detach(),
                                           None if head.bias is None else head.bias.detach(), self.temperature))

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
