"""What an objective is given: the teacher's scores and the per-token inputs.

A teacher never hands over more than it has. A local teacher can give full-vocabulary
log-probabilities; a served teacher (vLLM prompt logprobs) gives only its top-k and the
log-probability of the sampled token. Objectives declare which fields they need, and
`require` refuses with a message that names the missing field instead of approximating.

A local teacher's scores are lazy: they carry its hidden states and lm-head (`Head`), and
`resolved()` turns them into full log-probabilities for whichever rows are asked, so the
chunked path makes log q one row chunk at a time and (N, T, V) never exists at once.

Every tensor here has the same leading shape as the student logits without the vocabulary
axis: (N, T) for batched sequences or (M,) for flattened rows (the chunked path).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Head:
    """Hidden states and the lm-head that turns them into logits: logits = (h W^T + b) / T."""

    hidden: Tensor              # (..., H)
    weight: Tensor              # (V, H)
    bias: Tensor | None = None  # (V,)
    temperature: float = 1.0

    def logits(self, hidden: Tensor) -> Tensor:
        return self.scale(F.linear(hidden, self.weight, self.bias))

    def scale(self, logits: Tensor) -> Tensor:
        """Divide by the temperature; at T = 1 return the same tensor (no (C, V) copy)."""
        return logits if self.temperature == 1.0 else logits / self.temperature

    def logprobs(self) -> Tensor:
        """fp32 log-softmax (..., V) of this head's logits: the one place log-probs are made
        from hidden states (teacher scores, probes, the entropy gate)."""
        return F.log_softmax(self.logits(self.hidden).float(), dim=-1)

    def rows(self, index: slice | Tensor) -> "Head":
        return replace(self, hidden=self.hidden[index])

    def flatten(self) -> "Head":
        return replace(self, hidden=self.hidden.reshape(-1, self.hidden.shape[-1]))

    def to(self, device) -> "Head":
        return Head(self.hidden.to(device), self.weight.to(device), _to(self.bias, device), self.temperature)


TENSOR_FIELDS = ("logprobs", "topk_ids", "topk_logprobs", "sampled_logprobs", "chunk_ids", "chunk_logprobs",
                 "topk_mask")
# Fields with one value per position (no trailing axis).
POSITION_FIELDS = ("sampled_logprobs", "chunk_ids", "chunk_logprobs", "topk_mask")


@dataclass(frozen=True)
class TeacherScores:
    """Teacher log-probabilities at each response position.

    logprobs:         (..., V) full log-softmax, local teachers only.
    topk_ids:         (..., k) ids of the teacher's top-k tokens, best first.
    topk_logprobs:    (..., k) their log-probabilities (normalised over the full vocabulary).
    sampled_logprobs: (...,)   log q of the token the student sampled there.
    head:             a local teacher's hidden states (..., H) and lm-head: full log-probs on
                      demand (`resolved`), never all positions at once in the chunked path.
    A teacher with another tokenizer (`opdkit.models.crosstok`) scores aligned chunks instead:
    chunk_ids:        (...,) long: the chunk of each position, unique over the batch (its first
                      position's flat index); a chunk is never split across row chunks.
    chunk_logprobs:   (...,) the teacher's log-prob of the chunk's text, at every position of it.
    topk_mask:        (...,) bool: where topk_ids / topk_logprobs hold (chunk starts, where both
                      sides condition on the same text); elsewhere top-K objectives give 0.
    diagnostics:      name -> (...,) per-position values the teacher reports (alignment coverage).
    """

    logprobs: Tensor | None = None
    topk_ids: Tensor | None = None
    topk_logprobs: Tensor | None = None
    sampled_logprobs: Tensor | None = None
    head: Head | None = None
    chunk_ids: Tensor | None = None
    chunk_logprobs: Tensor | None = None
    topk_mask: Tensor | None = None
    diagnostics: dict = field(default_factory=dict)

    def rows(self, index: slice | Tensor) -> "TeacherScores":
        """The same scores restricted to a subset of (flattened) rows."""
        head = None if self.head is None else self.head.rows(index)
        return replace(self, head=head, diagnostics={k: v[index] for k, v in self.diagnostics.items()},
                       **{name: _take(getattr(self, name), index) for name in TENSOR_FIELDS})

    def flatten(self) -> "TeacherScores":
        """Collapse the leading (N, T) shape into rows (N*T,)."""
        def flat(name: str, t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.reshape(-1) if name in POSITION_FIELDS else t.reshape(-1, t.shape[-1])
        head = None if self.head is None else self.head.flatten()
        return TeacherScores(head=head, diagnostics={k: v.reshape(-1) for k, v in self.diagnostics.items()},
                             **{name: flat(name, getattr(self, name)) for name in TENSOR_FIELDS})

    def to(self, device) -> "TeacherScores":
        head = None if self.head is None else self.head.to(device)
        return TeacherScores(head=head, diagnostics={k: v.to(device) for k, v in self.diagnostics.items()},
                             **{name: _to(getattr(self, name), device) for name in TENSOR_FIELDS})

    def resolved(self) -> "TeacherScores":
        """Full log-probs made from the lazy head (no gradient), or these scores as they are."""
        if self.head is None:
            return self
        with torch.no_grad():
            logprobs = self.head.logprobs()
        return replace(self, logprobs=logprobs, head=None)

    def available(self) -> set[str]:
        have = {name for name in TENSOR_FIELDS if getattr(self, name) is not None}
        return have | {"logprobs"} if self.head is not None else have


def top_k_only(scores: TeacherScores, ids: Tensor, k: int) -> TeacherScores:
    """What a top-k-only (served) teacher reports, made from full scores (N, R, ...): its top-k ids and
    log-probs and the log-prob of `ids` (N, R). One row at a time: only (R, V) log-probs exist at once."""
    topk_ids, topk_logprobs, sampled = [], [], []
    for i in range(ids.shape[0]):
        logq = scores.rows(slice(i, i + 1)).resolved().logprobs[0]          # (R, V)
        top = logq.topk(k, dim=-1)
        topk_ids.append(top.indices)
        topk_logprobs.append(top.values)
        sampled.append(logq.gather(-1, ids[i].to(logq.device).unsqueeze(-1)).squeeze(-1))
    return TeacherScores(topk_ids=torch.stack(topk_ids), topk_logprobs=torch.stack(topk_logprobs),
                         sampled_logprobs=torch.stack(sampled))


@dataclass(frozen=True)
class ObjectiveInputs:
    """Per-position inputs besides the student logits.

    ids:                (...,) the token at each position (sampled by the student, or the
                        SFT target); long.
    teacher:            TeacherScores (empty for SFT and GRPO).
    behaviour_logprobs: (...,) log mu(y_t) of the policy that sampled y_t (stale weights,
                        top-p); enables the importance ratio.
    advantages:         (...,) per-token advantage (GRPO).
    """

    ids: Tensor
    teacher: TeacherScores = TeacherScores()
    behaviour_logprobs: Tensor | None = None
    advantages: Tensor | None = None

    def rows(self, index: slice | Tensor) -> "ObjectiveInputs":
        return ObjectiveInputs(
            ids=self.ids[index],
            teacher=self.teacher.rows(index),
            behaviour_logprobs=_take(self.behaviour_logprobs, index),
            advantages=_take(self.advantages, index),
        )

    def resolved(self) -> "ObjectiveInputs":
        """The same inputs with a lazy teacher head turned into full log-probs."""
        return self if self.teacher.head is None else replace(self, teacher=self.teacher.resolved())

    def flatten(self) -> "ObjectiveInputs":
        return ObjectiveInputs(
            ids=self.ids.reshape(-1),
            teacher=self.teacher.flatten(),
            behaviour_logprobs=None if self.behaviour_logprobs is None else self.behaviour_logprobs.reshape(-1),
            advantages=None if self.advantages is None else self.advantages.reshape(-1),
        )


@dataclass(frozen=True)
class ObjectiveOutput:
    """An objective's result: per-token loss (differentiable) and per-token diagnostics."""

    loss: Tensor                                                 # (...,)
    metrics: dict[str, Tensor] = field(default_factory=dict)     # (...,) each, detached


def upcast(t: Tensor) -> Tensor:
    """fp32 for low-precision tensors; fp32 and fp64 stay as they are (tests run in fp64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _take(t: Tensor | None, index: slice | Tensor) -> Tensor | None:
    return None if t is None else t[index]


def _to(t: Tensor | None, device) -> Tensor | None:
    return None if t is None else t.to(device)


# Field names an objective may need, with what provides them (for error messages).
NEEDS_HELP = {
    "logprobs": "full teacher log-probabilities (a local teacher: ModelTeacher or SelfTeacher)",
    "topk_ids": "the teacher's top-k ids (any teacher, served ones included)",
    "topk_logprobs": "the teacher's top-k log-probabilities",
    "sampled_logprobs": "the teacher's log-probability of each sampled token",
    "chunk_logprobs": "the teacher's log-probability of each aligned chunk (a teacher with another tokenizer)",
    "advantages": "per-token advantages (GRPO: opdkit.objectives.group_advantages)",
}


def require(objective: str, inputs: ObjectiveInputs, needs: tuple[str, ...], hint: str = "") -> None:
    """Raise a clear error when `inputs` lacks a field that `objective` needs; `hint` lists the
    objectives a top-k-only teacher supports (opdkit.objectives derives it from its table)."""
    have = inputs.teacher.available()
    if inputs.advantages is not None:
        have.add("advantages")
    missing = [n for n in needs if n not in have]
    if missing:
        what = "; ".join(f"{n}: {NEEDS_HELP[n]}" for n in missing)
        raise ValueError(
            f"objective {objective!r} needs {what}. The inputs provide only {sorted(have) or 'nothing'}."
            + (f" A teacher that returns only top-k scores supports: {hint}." if hint else "")
        )


def check_shapes(logits: Tensor, inputs: ObjectiveInputs) -> None:
    """Validate shapes and dtypes against the student logits (..., V); name the bad argument."""
    lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
    if not logits.is_floating_point():
        raise TypeError(f"student logits must be a floating tensor, got dtype {logits.dtype}")
    _expect("ids", inputs.ids, lead)
    if inputs.ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"ids must be an integer tensor of token ids, got dtype {inputs.ids.dtype}")
    t = inputs.teacher
    if t.logprobs is not None:
        _expect("teacher.logprobs", t.logprobs, lead + (vocab,))
    if t.topk_ids is not None or t.topk_logprobs is not None:
        if t.topk_ids is None or t.topk_logprobs is None:
            raise ValueError("teacher.topk_ids and teacher.topk_logprobs must be given together")
        _expect("teacher.topk_ids", t.topk_ids, lead + (t.topk_ids.shape[-1],))
        _expect("teacher.topk_logprobs", t.topk_logprobs, tuple(t.topk_ids.shape))
    for name in POSITION_FIELDS:
        if getattr(t, name) is not None:
            _expect(f"teacher.{name}", getattr(t, name), lead)
    for name in ("behaviour_logprobs", "advantages"):
        if getattr(inputs, name) is not None:
            _expect(name, getattr(inputs, name), lead)


def _expect(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {shape} to match the student logits")
