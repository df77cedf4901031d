"""Rollouts: the student samples responses; the sampler's own log-probabilities are kept.

`Sampler` is the protocol (HF generate here; a vLLM sampler can implement the same call).
`HFSampler` runs `model.generate` with a KV cache, temperature, top-p and EOS stopping, and
records log mu(y_t) under the distribution it actually sampled from (after temperature and
top-p), which the objectives use as the behaviour policy for the importance ratio. With
`record_topk` it also keeps the sampler's top-k ids and log-probabilities. Both are recorded
inside generation by a logits processor (`BehaviourRecorder`), one (B, V) step at a time, so no
(B, L, V) score tensor exists.
`LowPrecisionCopy` is a bf16 copy of the student for rollouts (`rollout.sampler_dtype`):
decoding a few sequences reads every weight per token, so half the bytes is up to twice
the tokens per second; the trainer keeps its fp32 weights and syncs the copy every step.
`RowSeededSampling` (with `row_seeds`, `rollout.decode_batch`) draws each row's tokens from its
own generator, seeded by (step salt, global row index): a response then depends on nothing
but its seed and the weights, so rows can be decoded in batches of any size and order.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Rollouts:
    """One entry per response. Lists, because responses have different lengths."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    sampler_logprobs: list[Tensor]                    # (len,) log mu(y_t)
    finished: list[bool]                              # ended with EOS within the budget
    topk_ids: list[Tensor] | None = None              # (len, k)
    topk_logprobs: list[Tensor] | None = None         # (len, k)
    meta: list = field(default_factory=list)          # the source example of each response
    from_student: list[bool] | None = None            # rollout.source=mix|teacher: who sampled each row

    def __len__(self) -> int:
        return len(self.response_ids)

    @classmethod
    def concat(cls, parts: list["Rollouts"]) -> "Rollouts":
        """One Rollouts from micro-batches (top-k kept only when every part recorded it)."""
        keep_topk = bool(parts) and all(p.topk_ids is not None for p in parts)
        out = cls([], [], [], [], [] if keep_topk else None, [] if keep_topk else None)
        for p in parts:
            out.prompt_ids += p.prompt_ids
            out.response_ids += p.response_ids
            out.sampler_logprobs += p.sampler_logprobs
            out.finished += p.finished
            out.meta += p.meta
            if keep_topk:
                out.topk_ids += p.topk_ids
                out.topk_logprobs += p.topk_logprobs
        return out


class Sampler(Protocol):
    def sample(self, model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
               top_p: float, greedy: bool = False, record_topk: int = 0) -> Rollouts: ...


@dataclass
class HFSampler:
    """Batched `generate` with left padding; stops each row at its first EOS."""

    eos_id: int
    pad_id: int

    def sample(self, model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, greedy: bool = False, record_topk: int = 0,
               row_seeds: list[int] | None = None) -> Rollouts:
        """With `row_seeds` (one per prompt) row i samples from its own generator (RowSeededSampling)."""
        from transformers import GenerationConfig, LogitsProcessorList
        input_ids, attention = left_pad(prompts, self.pad_id, next(model.parameters()).device)
        rows = RowSeededSampling(row_seeds, temperature, top_p, record_topk) if row_seeds and not greedy else None
        sampled = not greedy and rows is None
        recorder = rows or BehaviourRecorder(temperature if sampled else 1.0, top_p if sampled else 1.0, record_topk)
        # explicit sampling keys: a model's own defaults (top_k=50) must not leak in
        config = GenerationConfig(
            do_sample=sampled, temperature=temperature if sampled else None, top_p=top_p if sampled else None,
            top_k=0 if sampled else None, max_new_tokens=max_new_tokens, eos_token_id=self.eos_id,
            pad_token_id=self.pad_id, return_dict_in_generate=True)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                 logits_processor=LogitsProcessorList([recorder]))
        new = out.sequences[:, input_ids.shape[1]:]                      # (B, steps)
        chosen, top = recorder.recorded(new)
        return self._rollouts(prompts, new, chosen, top)

    def _rollouts(self, prompts: list[list[int]], new: Tensor, chosen: Tensor, top) -> Rollouts:
        rollouts = Rollouts([list(p) for p in prompts], [], [], [],
                            [] if top else None, [] if top else None)
        for row in range(new.shape[0]):
            n = response_length(new[row], self.eos_id, self.pad_id)
            rollouts.response_ids.append(new[row, :n].tolist())
            rollouts.sampler_logprobs.append(chosen[row, :n].clone())
            rollouts.finished.append(n > 0 and int(new[row, n - 1]) == self.eos_id)
            if top is not None:
                rollouts.topk_ids.append(top.indices[row, :n].clone())
                rollouts.topk_logprobs.append(top.values[row, :n].clone())
        return rollouts


class _StepRecorder:
    """What both logits processors share: generate's temperature / top-p warpers, and a per-step record
    of log mu for the emitted token and the top-k (never a (B, L, V) tensor)."""

    def __init__(self, temperature: float, top_p: float, record_topk: int):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper
        self.warpers = ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []) + \
                       ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
        self.record_topk = record_topk
        self.chosen, self.top_ids, self.top_values = [], [], []

    def _log_mu(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """log mu of this step, as generate samples it; records its top-k."""
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        logmu = F.log_softmax(scores.float(), dim=-1)
        if self.record_topk:
            top = logmu.topk(self.record_topk, dim=-1)
            self.top_ids.append(top.indices)
            self.top_values.append(top.values)
        return logmu

    def _stacked(self, shape: torch.Size):
        """(B, steps) log mu of the chosen tokens and (indices, values) of the top-k, or None."""
        if not self.chosen:
            return torch.zeros(shape), None
        chosen = torch.stack(self.chosen, 1)
        if not self.record_topk:
            return chosen, None
        return chosen, SimpleNamespace(values=torch.stack(self.top_values, 1), indices=torch.stack(self.top_ids, 1))


class BehaviourRecorder(_StepRecorder):
    """A logits processor that records log mu of each emitted token and leaves the logits alone.

    `output_scores` kept every step's (B, V) processed scores and the sampler stacked them twice more
    to read one log-prob per token: three (B, L, V) fp32 buffers, 4.3 GB for one 4 x 256 Gemma rollout
    (BENCHMARKS, issue 19 session 5). generate applies temperature and top-p after custom processors,
    so this applies the same warpers to its own copy, holds that step's (B, V) log mu until the next
    call shows which token was emitted (the last column of input_ids), and keeps only that entry.
    """

    def __init__(self, temperature: float, top_p: float, record_topk: int = 0):
        super().__init__(temperature, top_p, record_topk)
        self.pending: Tensor | None = None               # this step's (B, V) log mu; its token comes next call

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self._settle(input_ids[:, -1])
        self.pending = self._log_mu(input_ids, scores)  # the warpers return new tensors: scores stay as they are
        return scores

    def _settle(self, emitted: Tensor) -> None:
        if self.pending is not None:
            self.chosen.append(self.pending.gather(-1, emitted.unsqueeze(-1).to(self.pending.device)).squeeze(-1))
            self.pending = None

    def recorded(self, new: Tensor):
        """(B, steps) log mu of the emitted tokens `new` and (indices, values) of the top-k, or None."""
        if new.shape[1]:
            self._settle(new[:, -1])
        return self._stacked(new.shape)


class RowSeededSampling(_StepRecorder):
    """A logits processor that samples every row from its own torch.Generator, then forces that token.

    generate runs greedy around it, so the token it leaves unmasked is the one emitted. The draw
    is argmax(log mu - log E) with E ~ Exp(1) i.i.d. per token from the row's generator: an exact
    sample from mu (the exponential race, equivalent to Gumbel-max), where mu is softmax(logits / T)
    restricted to the top-p nucleus by transformers' own warpers, as in `do_sample`. It records
    log mu of each chosen token (and the top-k), the behaviour policy, instead of whole score rows.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, record_topk: int = 0):
        super().__init__(temperature, top_p, record_topk)
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        logmu = self._log_mu(input_ids, scores)
        race = torch.stack([torch.empty(scores.shape[-1]).exponential_(generator=g) for g in self.generators])
        choice = (logmu - race.to(logmu.device).log()).argmax(-1, keepdim=True)       # (B, 1)
        self.chosen.append(logmu.gather(-1, choice).squeeze(-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, choice, 0.0)

    def recorded(self, new: Tensor):
        """(B, steps) log mu of the chosen tokens and (indices, values) of the top-k, or None."""
        return self._stacked(new.shape)


def sample_in_decode_batches(sampler, model, prompts: list[list[int]], seeds: list[int], decode_batch: int,
                             **sampling) -> Rollouts:
    """Rows sorted by prompt length (less left padding), `decode_batch` per generate call, each row
    seeded by its own seed; returned in the input order. A row's response does not depend on
    which rows share its call, so any decode_batch and any rank split give the same responses."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    parts = [sampler.sample(model, [prompts[i] for i in chunk], row_seeds=[seeds[i] for i in chunk], **sampling)
             for chunk in [order[j:j + decode_batch] for j in range(0, len(order), decode_batch)]]
    merged, where = Rollouts.concat(parts), {row: k for k, row in enumerate(order)}
    pick = lambda values: None if values is None else [values[where[i]] for i in range(len(prompts))]
    return Rollouts(pick(merged.prompt_ids), pick(merged.response_ids), pick(merged.sampler_logprobs),
                    pick(merged.finished), pick(merged.topk_ids), pick(merged.topk_logprobs))


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[Tensor, Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def response_length(tokens: Tensor, eos_id: int, pad_id: int) -> int:
    """Tokens up to and including the first EOS; all of them when no EOS was sampled.

    generate pads finished rows with pad_id; when pad == eos the first EOS still ends the row.
    """
    hits = (tokens == eos_id).nonzero()
    return int(hits[0]) + 1 if len(hits) else tokens.shape[0]


class LowPrecisionCopy:
    """A copy of the student with parameters in `dtype`, re-synced from the student before each rollout.

    Buffers keep their precision: rotary frequencies rounded to bf16 would shift every
    position. The sampler records the copy's log-probabilities, so the importance ratio and
    `diag/sampler_gap` see the precision mismatch like any other behaviour-policy gap.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.data = p.data.to(dtype)

    @torch.no_grad()
    def synced(self, source: torch.nn.Module) -> torch.nn.Module:
        for mine, theirs in zip(self.model.parameters(), source.parameters(), strict=True):
            mine.copy_(theirs)
        return self.model
