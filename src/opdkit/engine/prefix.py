"""Whose samples form the prefixes: `rollout.source` = student | teacher | mix.

The Decoupling paper separates the prefix source (who wrote y_<t) from the token-level KL
direction at each position. opdkit's objectives are per position, so any of them can be
applied on teacher-written prefixes; only the policy-gradient ones care who sampled y_t
itself (`opdkit.objectives.prefix_problem` says which, checked at config load).

- Each response is student-sampled with probability `rollout.student_fraction` (GKD's
  `lmbda`): one draw per response from a generator seeded by (step salt, the response's
  global index), so a run is reproducible and ranks under torchrun draw independently
  (their global indices differ) without sharing a random stream.
- Teacher rows are sampled by the same `HFSampler` code at `rollout.temperature` and
  `rollout.top_p`, from the teacher's own prompt (PI included); the recorded log mu(y_t)
  is then the teacher's sampling distribution, which is the behaviour policy of that row.
  The student is trained on (its own prompt, the teacher's response).
- `DECOUPLING_CELLS`: the four named cells of the 2x2 as config overrides (examples/decoupling.md).

A teacher with another tokenizer plugs in here: it would sample text, which is re-tokenised
by the student's tokenizer before it joins the batch (`teacher_rollouts` is the one place).
"""
from __future__ import annotations

import contextlib
import random

from opdkit.models.checkpoint import seeded
from opdkit.models.rollout import HFSampler, Rollouts

SOURCES = ("student", "teacher", "mix")

# The Decoupling 2x2: prefix source x KL direction, as config overrides on a distill config.
DECOUPLING_CELLS = {
    "teacher_fkl": {"rollout.source": "teacher", "objective.name": "fkl",
                    "why": "teacher prefixes + forward KL: supervised KD (SFT on teacher samples with soft targets)"},
    "teacher_rkl": {"rollout.source": "teacher", "objective.name": "rkl",
                    "why": "teacher prefixes + reverse KL: mode-seeking targets on the teacher's states"},
    "student_fkl": {"rollout.source": "student", "objective.name": "fkl",
                    "why": "student prefixes + forward KL: DAgger-like, mass-covering targets on the student's states"},
    "student_rkl": {"rollout.source": "student", "objective.name": "rkl",
                    "why": "student prefixes + reverse KL: on-policy distillation (OPD)"},
}


def student_fraction(source: str, fraction: float) -> float:
    """The share of student-sampled responses a source means (mix: the configured fraction)."""
    return {"student": 1.0, "teacher": 0.0}.get(source, fraction)


def draw_student_rows(salt: int, first: int, n: int, fraction: float) -> list[bool]:
    """For responses with global indices first .. first+n-1: True where the student samples it.

    String seeds are hashed (SHA-512) by `random.Random`, so (salt, index) pairs never collide.
    """
    if fraction >= 1.0:
        return [True] * n
    if fraction <= 0.0:
        return [False] * n
    return [random.Random(f"prefix:{salt}:{first + i}").random() < fraction for i in range(n)]


# Teacher writers sample under seed + k * WRITER_SEED (k = 1, 2, ...): never another chunk's student seed.
WRITER_SEED = 2**32


def sample_seeded(sampler, model, prompts: list[list[int]], seed: int | None, **sampling) -> Rollouts:
    with seeded(seed) if seed is not None else contextlib.nullcontext():
        return sampler.sample(model, prompts, **sampling)


def teacher_rollouts(s, items: list, micro_batch: int, seed: int | None, **sampling) -> Rollouts:
    """The teacher writes responses to its own prompts of `items`; prompt_ids are the student's.

    Micro-batch j of each writer samples under seed + k * WRITER_SEED + j * micro_batch (k: the
    writer). Always the HF sampler (a vLLM sampler holds only the student's weights). The
    teacher's context is entered (a LoRA self-teacher samples with its adapters off).
    """
    sampler = s.sampler if isinstance(s.sampler, HFSampler) else HFSampler(s.tokenizer.eos_token_id,
                                                                           s.tokenizer.pad_token_id)
    pieces = []
    for k, (teacher, positions) in enumerate(writers(s.teacher, [it.example for it in items]), 1):
        with teacher.context():
            for start in range(0, len(positions), micro_batch):
                chunk = positions[start:start + micro_batch]
                prompts = [teacher.renderer(items[j].example) for j in chunk]
                chunk_seed = None if seed is None else seed + k * WRITER_SEED + start
                pieces.append((chunk, sample_seeded(sampler, teacher.model(), prompts, chunk_seed, **sampling)))
    out = in_order(pieces, len(items))
    out.prompt_ids = [list(it.prompt_ids) for it in items]
    return out


def writers(teacher, examples: list) -> list[tuple[object, list[int]]]:
    """(teacher that writes, positions of the examples it writes): routed teachers each write their own."""
    members = getattr(teacher, "members", None)
    if members is None:
        return [(teacher, list(range(len(examples))))]
    groups = {}
    for j, example in enumerate(examples):
        groups.setdefault(teacher.member_name(example), []).append(j)
    return [(members[name], positions) for name, positions in groups.items()]


def collect_from_sources(s, items: list, fraction: float, micro_batch: int, salt: int | None, first: int,
                         **sampling) -> Rollouts:
    """One response per item, each from the student (probability `fraction`) or the teacher, in item order.

    The micro-batches are the student path's (items [j*mb, (j+1)*mb), seed salt + the global index
    of the first), each split into its student rows and its teacher rows: a response depends on
    its global index and the step's salt only, not on the rank that drew it (when micro-batches
    do not straddle ranks, as for the student path). Returns Rollouts with `from_student` set.
    """
    from_student = draw_student_rows(0 if salt is None else salt, first, len(items), fraction)
    model = s.rollout_model() if any(from_student) else None
    pieces = []
    for start in range(0, len(items), micro_batch):
        chunk = range(start, min(len(items), start + micro_batch))
        seed = None if salt is None else salt + first + start
        mine = [i for i in chunk if from_student[i]]
        theirs = [i for i in chunk if not from_student[i]]
        if mine:
            pieces.append((mine, sample_seeded(s.sampler, model, [items[i].prompt_ids for i in mine], seed, **sampling)))
        if theirs:
            pieces.append((theirs, teacher_rollouts(s, [items[i] for i in theirs], micro_batch, seed, **sampling)))
    out = in_order(pieces, len(items))
    out.from_student = from_student
    return out


def in_order(pieces: list[tuple[list[int], Rollouts]], n: int) -> Rollouts:
    """Rollouts whose row i is row j of the piece that lists i at position j."""
    where = {i: (part, j) for rows, part in pieces for j, i in enumerate(rows)}
    keep_topk = all(part.topk_ids is not None for _, part in pieces)
    out = Rollouts([], [], [], [], [] if keep_topk else None, [] if keep_topk else None)
    for i in range(n):
        part, j = where[i]
        out.prompt_ids.append(part.prompt_ids[j])
        out.response_ids.append(part.response_ids[j])
        out.sampler_logprobs.append(part.sampler_logprobs[j])
        out.finished.append(part.finished[j])
        if keep_topk:
            out.topk_ids.append(part.topk_ids[j])
            out.topk_logprobs.append(part.topk_logprobs[j])
    return out
