"""Prompt + response sequences as right-padded tensors, and hidden states at response positions.

Right padding keeps every real token's position id equal to its index and puts pads after
the tokens that matter, so a causal model needs no position bookkeeping. The hidden state
that scores response token j of a row sits at position len(prompt) - 1 + j: the shift by
one of `opdkit.logprobs.align_next_token`, applied per row because prompts differ in
length (and differ between student and teacher when the teacher sees privileged info).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Packed:
    input_ids: Tensor        # (N, L) prompt + response + pad
    attention_mask: Tensor   # (N, L)
    positions: Tensor        # (N, R) index of the hidden state scoring response token j
    response_ids: Tensor     # (N, R)
    response_mask: Tensor    # (N, R) 1 on real response tokens


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int, device=None) -> Packed:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    n = len(prompts)
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    reply = max(1, max(len(r) for r in responses))
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    positions = torch.zeros((n, reply), dtype=torch.long)
    response_ids = torch.full((n, reply), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, reply), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not p:
            raise ValueError(f"row {i} has an empty prompt; a response needs at least one token before it")
        ids[i, :len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention[i, :len(p) + len(r)] = 1
        positions[i, :len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
        response_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        response_mask[i, :len(r)] = 1.0
    return Packed(*(t.to(device) for t in (ids, attention, positions, response_ids, response_mask)))


def response_hidden(model, packed: Packed) -> Tensor:
    """Final hidden states (N, R, H) that score each response token; no lm-head is applied."""
    out = model.get_decoder()(input_ids=packed.input_ids, attention_mask=packed.attention_mask)
    hidden = out.last_hidden_state
    index = packed.positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)


def pad_rows(rows: list[Tensor], width: int, fill: float = 0.0) -> Tensor:
    """Stack 1-D or 2-D per-row tensors into (N, width, ...) with `fill` after each row."""
    shape = (len(rows), width) + tuple(rows[0].shape[1:]) if rows else (0, width)
    out = torch.full(shape, fill, dtype=rows[0].dtype if rows else torch.float32)
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r
    return out
