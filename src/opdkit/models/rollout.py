"""Rollouts: the student samples responses; the sampler's own log-probabilities are kept.

`Sampler` is the protocol (HF generate here; a vLLM sampler can implement the same call).
`HFSampler` runs `model.generate` with a KV cache, temperature, top-p and EOS stopping, and
records log mu(y_t) under the distribution it actually sampled from (after temperature and
top-p), which the objectives use as the behaviour policy for the importance ratio. With
`record_topk` it also keeps the sampler's top-k ids and log-probabilities.
`LowPrecisionCopy` is a bf16 copy of the student for rollouts (`rollout.sampler_dtype`):
decoding a few sequences reads every weight per token, so half the bytes is up to twice
the tokens per second; the trainer keeps its fp32 weights and syncs the copy every step.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
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
               top_p: float = 1.0, greedy: bool = False, record_topk: int = 0) -> Rollouts:
        from transformers import GenerationConfig
        input_ids, attention = left_pad(prompts, self.pad_id, next(model.parameters()).device)
        config = GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else temperature, top_p=None if greedy else top_p,
            top_k=0, max_new_tokens=max_new_tokens, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
            output_scores=True, return_dict_in_generate=True)   # explicit: a model's own defaults (top_k=50) must not leak in
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
        new = out.sequences[:, input_ids.shape[1]:]                      # (B, steps)
        scores = torch.stack(out.scores, dim=1).float() if out.scores else new.new_zeros(new.shape + (1,)).float()
        logmu = F.log_softmax(scores, dim=-1)                          # what was sampled from
        chosen = logmu.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        top = logmu.topk(record_topk, dim=-1) if record_topk else None
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
