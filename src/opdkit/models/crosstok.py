"""A teacher with another tokenizer (cross-tokenizer OPD): it scores aligned chunks of the student's text.

`CrossTokenizerTeacher.score` decodes each student response, re-tokenises the text with the
teacher's tokenizer, aligns the two tokenisations by character offsets
(`opdkit.models.alignment`), runs the teacher on its own prompt + its own tokens, and returns,
at the student's positions (`TeacherScores`):
- chunk_ids / chunk_logprobs: each position's chunk and the teacher's log Q of the chunk's text
  (the sum of its token log-probs there), for `chunk_rkl` (opdkit.objectives.chunks);
- with k > 0, topk_ids / topk_logprobs / topk_mask: at each chunk's first student token (both
  sides condition on the same text there), the teacher's k most likely tokens among those
  both vocabularies spell the same, as student ids, with log-probs normalised over the
  teacher's whole vocabulary, so the rest (other shared tokens and tokens only the teacher
  has) is the tail bucket of `shared_topk`;
- diagnostics: alignment coverage per student token (`align_single`: its chunk is one token on
  both sides; `align_shared`: its string is a teacher token too).
Log-probs at the teacher's 262k-entry vocabulary are made `rows` positions at a time, so no
(N, T, V) tensor exists.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from opdkit.models.alignment import Aligner, Alignment, shared_vocabulary
from opdkit.models.forward import model_head, pack
from opdkit.objectives.losses import XTOK
from opdkit.objectives.scores import Head, TeacherScores
from opdkit.tasks.data import Example


class CrossTokenizerTeacher:
    provides = XTOK

    def __init__(self, model, renderer, student_tok, teacher_tok, k: int = 0, temperature: float = 1.0,
                 rows: int = 64):
        self._model = model.eval().requires_grad_(False)
        self.renderer, self.k, self.temperature, self.rows = renderer, k, temperature, rows
        self.aligner = Aligner(student_tok, teacher_tok)
        self.aligner.check()
        self.pad_id = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else self.aligner.teacher_eos
        shared = shared_vocabulary(student_tok, teacher_tok)
        self.shared_student = torch.tensor(sorted(shared), dtype=torch.long)
        self.shared_teacher = torch.tensor([shared[i] for i in sorted(shared)], dtype=torch.long)
        self.is_shared = torch.zeros(len(student_tok), dtype=torch.bool)
        self.is_shared[self.shared_student] = True

    def model(self):
        return self._model

    def context(self):
        return contextlib.nullcontext()

    def after_step(self, student) -> None:
        """A separate model: nothing moves."""

    def checkpoint_modules(self) -> dict:
        return {}

    @torch.no_grad()
    def score(self, examples: list[Example], responses: list[list[int]]) -> TeacherScores:
        aligned = [self.aligner(r) for r in responses]
        prompts = [self.renderer(e) for e in examples]
        model = self._model
        packed = pack(prompts, [a.teacher_ids for a in aligned], self.pad_id, next(model.parameters()).device)
        head = model_head(model, packed, model.get_output_embeddings().weight.shape[0], self.temperature)
        starts = _chunk_starts(aligned, packed.response_ids.shape[1])
        token_lp, top_ids, top_lp = self._token_logprobs(head, packed.response_ids, starts)
        return self._at_student_positions(aligned, responses, token_lp, top_ids, top_lp)

    def _token_logprobs(self, head: Head, ids: torch.Tensor, starts: torch.Tensor):
        """log q of each teacher token (N, R_t) and, where `starts`, the top-k over shared tokens (N, R_t, k)."""
        n, width = ids.shape
        hidden = head.hidden.reshape(n * width, -1)
        flat_ids, flat_starts = ids.reshape(-1), starts.reshape(-1)
        token_lp = torch.zeros(n * width)
        k = min(self.k, len(self.shared_teacher))
        top_ids = torch.zeros(n * width, k, dtype=torch.long)
        top_lp = torch.full((n * width, k), -30.0)
        shared = self.shared_teacher.to(hidden.device)
        for s in range(0, n * width, self.rows):
            rows = slice(s, s + self.rows)
            logp = F.log_softmax(head.logits(hidden[rows]).float(), dim=-1)          # (C, V_teacher)
            token_lp[rows] = logp.gather(-1, flat_ids[rows].unsqueeze(-1)).squeeze(-1).cpu()
            here = flat_starts[rows].nonzero().squeeze(-1)
            if k and here.numel():
                best = logp[here][:, shared].topk(k, dim=-1)
                top_ids[s + here.cpu()] = self.shared_student[best.indices.cpu()]
                top_lp[s + here.cpu()] = best.values.cpu()
        return token_lp.view(n, width), top_ids.view(n, width, k), top_lp.view(n, width, k)

    def _at_student_positions(self, aligned: list[Alignment], responses: list[list[int]], token_lp, top_ids, top_lp):
        """The teacher's chunk scores laid out on the student's (N, R) positions."""
        n, width = len(responses), max(1, max(len(r) for r in responses))
        chunk_ids = torch.arange(n * width).view(n, width).clone()       # padding: each position its own chunk
        chunk_lp = torch.zeros(n, width)
        mask = torch.zeros(n, width, dtype=torch.bool)
        ids = torch.zeros(n, width, top_ids.shape[-1], dtype=torch.long)
        lps = torch.full((n, width, top_ids.shape[-1]), -30.0)
        single, shared = torch.zeros(n, width), torch.zeros(n, width)
        for i, (a, response) in enumerate(zip(aligned, responses)):
            q = torch.zeros(a.chunks).index_add(0, torch.tensor(a.teacher_chunk, dtype=torch.long),
                                                token_lp[i, :len(a.teacher_chunk)]) if a.chunks else None
            first_student, first_teacher = _firsts(a.student_chunk), _firsts(a.teacher_chunk)
            for t, c in enumerate(a.student_chunk):
                chunk_ids[i, t] = i * width + first_student[c]
                chunk_lp[i, t] = q[c]
            for c, t in first_student.items():
                mask[i, t] = True
                ids[i, t], lps[i, t] = top_ids[i, first_teacher[c]], top_lp[i, first_teacher[c]]
            single[i, :len(response)] = torch.tensor(a.single(), dtype=torch.float32)
            shared[i, :len(response)] = self.is_shared[torch.tensor(response, dtype=torch.long)].float()
        top = {} if not self.k else {"topk_ids": ids, "topk_logprobs": lps, "topk_mask": mask}
        return TeacherScores(chunk_ids=chunk_ids, chunk_logprobs=chunk_lp,
                             diagnostics={"align_single": single, "align_shared": shared}, **top)


def _firsts(chunk_of: list[int]) -> dict[int, int]:
    """chunk -> index of its first token."""
    out: dict[int, int] = {}
    for t, c in enumerate(chunk_of):
        out.setdefault(c, t)
    return out


def _chunk_starts(aligned: list[Alignment], width: int) -> torch.Tensor:
    """(N, width) bool: the first teacher token of every chunk."""
    out = torch.zeros(len(aligned), width, dtype=torch.bool)
    for i, a in enumerate(aligned):
        for t in _firsts(a.teacher_chunk).values():
            out[i, t] = True
    return out


PROBE = ("The capital of France is Paris. To add 17 and 25, first add 7 and 5 to get 12, write 2 and carry 1; "
         "then 1 + 2 + 1 = 4, so the answer is 42.")


def cross_tokenizer_notes(teacher: CrossTokenizerTeacher, student_tok, teacher_tok, plain: bool) -> list[str]:
    """What the preflight reports for a cross-tokenizer pair instead of refusing it."""
    from opdkit.objectives.losses import cross_tokenizer_objectives
    ids = list(student_tok(PROBE, add_special_tokens=False)["input_ids"]) + [student_tok.eos_token_id]
    a = teacher.aligner(ids)
    single = sum(a.single()) / len(ids)
    shared = float(teacher.is_shared[torch.tensor(ids[:-1])].float().mean())
    fast = getattr(teacher_tok, "is_fast", False)
    own = "plain text" if plain or not getattr(teacher_tok, "chat_template", None) else "its own chat template"
    return [f"cross-tokenizer pair: student vocabulary {len(student_tok)}, teacher {len(teacher_tok)}; "
            f"{len(teacher.shared_student)} student tokens are teacher tokens with the same string",
            f"alignment by {'character offsets' if fast else 'per-token decoding (the teacher tokenizer has no offsets)'};"
            f" student EOS {student_tok.eos_token!r} is scored as the teacher's {teacher_tok.eos_token!r}",
            f"alignment coverage on a probe paragraph: {len(ids)} student / {len(a.teacher_ids)} teacher tokens in "
            f"{a.chunks} chunks; {single:.0%} of student tokens in one-to-one chunks, {shared:.0%} shared strings",
            f"teacher prompt: {own}",
            f"objectives that work across tokenizers: {cross_tokenizer_objectives()}; the full-vocabulary ones "
            f"(rkl, fkl, jsd, jsd_norm, kl_mix), sampled_rkl and student-support top-K do not"]
