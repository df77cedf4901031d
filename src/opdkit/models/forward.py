"""The forward passes of student and teacher over prompt + response, and where they are read.

Alignment convention (the one place it lives): a causal LM's output at position t scores
the token at position t + 1. Sequences are right-padded prompt + response tensors, which
keeps every real token's position id equal to its index and puts pads after the tokens that
matter. The hidden state that scores response token j of a row therefore sits at position
len(prompt) - 1 + j (`scoring_positions`), per row because prompts differ in length (and
differ between student and teacher when the teacher sees privileged information).
`gather_positions` reads those hidden states; no lm-head is applied to the whole sequence.

- `model_head`: a model's `Head` (hidden states at response positions + its lm-head), for
  scoring without gradients (teachers, probes, evaluation, the entropy gate).
- `StudentForward`: the student's training forward as a module that DDP and FSDP2 can wrap;
  `student_head` turns its output into a `Head` for the chunked objective.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from opdkit.objectives.scores import Head


@dataclass
class Packed:
    input_ids: Tensor        # (N, L) prompt + response + pad
    attention_mask: Tensor   # (N, L)
    positions: Tensor        # (N, R) index of the hidden state scoring response token j
    response_ids: Tensor     # (N, R)
    response_mask: Tensor    # (N, R) 1 on real response tokens


def scoring_positions(prompt_len: int, response_len: int) -> Tensor:
    """(response_len,) positions whose output scores each response token: output t scores token t + 1."""
    return torch.arange(prompt_len - 1, prompt_len - 1 + response_len)


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
        positions[i, :len(r)] = scoring_positions(len(p), len(r))
        response_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        response_mask[i, :len(r)] = 1.0
    return Packed(*(t.to(device) for t in (ids, attention, positions, response_ids, response_mask)))


def gather_positions(hidden: Tensor, positions: Tensor) -> Tensor:
    """(N, L, H) outputs over the sequence -> (N, R, H) at the scoring positions (N, R)."""
    return hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def response_hidden(model, packed: Packed) -> Tensor:
    """Final hidden states (N, R, H) that score each response token; no lm-head is applied."""
    out = model.get_decoder()(input_ids=packed.input_ids, attention_mask=packed.attention_mask)
    return gather_positions(out.last_hidden_state, packed.positions)


def head_of(model, hidden: Tensor, vocab: int, temperature: float = 1.0) -> Head:
    """The model's lm-head over the first `vocab` rows (pairs whose heads are padded differently)."""
    layer = model.get_output_embeddings()
    bias = None if layer.bias is None else layer.bias[:vocab]
    return Head(hidden, layer.weight[:vocab], bias, temperature)


def model_head(model, packed: Packed, vocab: int, temperature: float = 1.0) -> Head:
    """`model`'s Head at the response positions of `packed` (call under no_grad to score)."""
    return head_of(model, response_hidden(model, packed), vocab, temperature)


class StudentForward(nn.Module):
    """The student's training forward: hidden states at response positions and its lm-head.

    DDP and FSDP2 hook a module's forward; the chunked objective reads the lm-head weight
    outside the model's own forward, so the wrapper returns it from inside one.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, positions):
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        head = self.model.get_output_embeddings()
        return gather_positions(hidden, positions), head.weight, head.bias   # (N, R, H), (V, H), (V,) | None


def student_head(forward: nn.Module, packed: Packed, vocab: int) -> Head:
    """The student's `Head` for a packed micro-batch, through its (possibly wrapped) StudentForward."""
    hidden, weight, bias = forward(packed.input_ids, packed.attention_mask, packed.positions)
    return Head(hidden, weight[:vocab], None if bias is None else bias[:vocab])


def pad_rows(rows: list[Tensor], width: int, fill: float = 0.0) -> Tensor:
    """Stack 1-D or 2-D per-row tensors into (N, width, ...) with `fill` after each row."""
    shape = (len(rows), width) + tuple(rows[0].shape[1:]) if rows else (0, width)
    out = torch.full(shape, fill, dtype=rows[0].dtype if rows else torch.float32)
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r
    return out
