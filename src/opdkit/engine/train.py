"""One optimizer step for sft, distill (OPD), self-distill (OPSD) and grpo.

The loop around it (checkpoints, resume, evaluation, the guard) is `opdkit.engine.runner`. The step
takes values: `StepSettings` (read from the config once) and the run's `RunState` (the
objective in use and the response length, which may change during a run).
Per optimizer step: take prompts -> responses (sampled by the student; for SFT, given or
teacher-written) -> rewards and advantages (GRPO) -> count the step's loss-bearing tokens
-> per micro-batch: teacher scores, student forward, objective on hidden states in chunks,
backward with weights mask / step_tokens (so accumulation is token-exact) -> clip, step,
schedule -> metrics (response and token diagnostics included). A non-finite loss or
gradient skips the optimizer step; the runner counts and logs it.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace

import torch

from opdkit.engine.diagnostics import entropy_gap, response_diagnostics
from opdkit.engine.optim import OptimSettings, grad_norm
from opdkit.engine.prefix import collect_from_sources, student_fraction
from opdkit.engine.runstate import RunState
from opdkit.engine.session import Session
from opdkit.models.checkpoint import seeded
from opdkit.models.forward import pack, pad_rows, student_head
from opdkit.models.multiteacher import kept_rows, local_models, per_teacher_means, per_teacher_sums
from opdkit.models.rollout import Rollouts
from opdkit.objectives import group_advantages
from opdkit.objectives.logprobs import chunked_objective_loss, objective_loss
from opdkit.objectives.reduction import token_weights
from opdkit.objectives.scores import ObjectiveInputs
from opdkit.scale.profile import PhaseTimer
from opdkit.tasks.data import batches
from opdkit.tasks.rewards import make_check, make_reward


@dataclass(frozen=True)
class StepSettings:
    """What one optimizer step reads from the config, as values (`from_config`, once per run)."""

    mode: str
    prompts_per_step: int
    group: int                    # responses per prompt (GRPO's G; 1 for sft)
    micro_batch: int
    temperature: float
    top_p: float
    record_topk: int
    sft_traces: str               # data | teacher
    reward_kind: str
    chunked: bool
    chunk_rows: int               # 0: automatic
    mask_special: bool
    diagnostics: bool
    hedge_words: tuple[str, ...]
    check: str                    # rule check ('' = none)
    optim: OptimSettings
    student_fraction: float = 1.0  # rollout.source: 1 student, 0 teacher, else mix (opdkit.engine.prefix)

    @classmethod
    def from_config(cls, cfg) -> "StepSettings":
        r, o = cfg.rollout, cfg.objective
        return cls(cfg.mode, cfg.optim.prompts_per_step, r.samples_per_prompt if cfg.mode != "sft" else 1,
                   cfg.optim.micro_batch, r.temperature, r.top_p, r.record_topk, cfg.teacher.sft_traces,
                   cfg.reward.kind, o.chunked, o.chunk_rows, o.mask_special, cfg.run.diagnostics,
                   tuple(cfg.run.hedge_words), cfg.run.check, OptimSettings.from_config(cfg),
                   student_fraction(r.source, r.student_fraction))


# ----------------------------------------------------------------------------- responses

def collect(s: Session, c: StepSettings, items: list, max_new_tokens: int, salt: int | None = None,
            first: int = 0) -> Rollouts:
    """Responses for one step's prompts (G per prompt); `meta` holds each response's example.

    With `salt`, each micro-batch samples under the seed salt + the global index of its first
    response (`first` is that of items[0]), so a response does not depend on which rank drew it.
    """
    expanded = [it for it in items for _ in range(c.group)]
    if c.mode == "sft":
        return sft_targets(s, c, expanded, max_new_tokens)
    if c.student_fraction < 1.0:        # teacher-written prefixes for some rows (rollout.source)
        out = collect_from_sources(s, expanded, c.student_fraction, c.micro_batch, salt, first * c.group,
                                   max_new_tokens=max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                                   record_topk=c.record_topk)
        out.meta = [it.example for it in expanded]
        return out
    model, parts = s.rollout_model(), []
    for i, chunk in enumerate(batches(expanded, c.micro_batch)):
        seed = None if salt is None else salt + first * c.group + i * c.micro_batch
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            parts.append(s.sampler.sample(model, [it.prompt_ids for it in chunk], max_new_tokens=max_new_tokens,
                                          temperature=c.temperature, top_p=c.top_p, record_topk=c.record_topk))
    out = Rollouts.concat(parts)
    out.meta = [it.example for it in expanded]
    return out


def sft_targets(s: Session, c: StepSettings, items: list, max_new_tokens: int) -> Rollouts:
    """Given responses (+EOS), or greedy answers written by the teacher from its (PI) prompt."""
    prompts = [it.prompt_ids for it in items]
    if c.sft_traces == "data":
        eos = s.tokenizer.eos_token_id
        responses = [list(s.tokenizer(it.example.response, add_special_tokens=False)["input_ids"]) + [eos]
                     for it in items]
    else:
        teacher_prompts = [s.teacher.renderer(it.example) for it in items]
        with s.teacher.context():       # a LoRA self-teacher writes with its adapters off
            written = Rollouts.concat([s.sampler.sample(s.teacher.model(), chunk, max_new_tokens=max_new_tokens,
                                                        greedy=True)
                                       for chunk in batches(teacher_prompts, c.micro_batch)])
        responses = written.response_ids
    zeros = [torch.zeros(len(r)) for r in responses]
    return Rollouts(prompts, responses, zeros, [bool(r) and r[-1] == s.tokenizer.eos_token_id for r in responses],
                    meta=[it.example for it in items])


def first_special_mask(responses: list[list[int]], special: set[int], width: int) -> torch.Tensor:
    """(N, width) 0 at the first occurrence of each differing special token in a row, else 1."""
    mask = torch.ones(len(responses), width)
    for i, r in enumerate(responses):
        seen = set()
        for j, t in enumerate(r):
            if t in special and t not in seen:
                mask[i, j] = 0.0
                seen.add(t)
    return mask


def loss_mask(s: Session, c: StepSettings, rollouts: Rollouts) -> tuple[torch.Tensor | None, int, int]:
    """(N, width) 1 where a response token carries loss (None: every token does), the number of
    masked special tokens, and the number of loss-bearing tokens. Masked: the first occurrence of
    each special token that differs between the pair (objective.mask_special), and every token of an
    example whose routed teacher the guard dropped (`opdkit.models.multiteacher.kept_rows`)."""
    responses = rollouts.response_ids
    width = max(1, max(len(r) for r in responses))
    special = set(s.report.masked_special_ids) if c.mask_special else set()
    keep = first_special_mask(responses, special, width) if special else None
    masked = 0 if keep is None else int((keep == 0).sum())
    rows = kept_rows(s.teacher, rollouts.meta) if rollouts.meta else None
    if rows is not None:
        keep = (torch.ones(len(responses), width) if keep is None else keep) * torch.tensor(rows, dtype=torch.float32)[:, None]
    if keep is None:
        return None, 0, sum(len(r) for r in responses)
    return keep, masked, int(sum(float(keep[i, :len(r)].sum()) for i, r in enumerate(responses)))


def answer_rewards(rollouts: Rollouts, texts: list[str], reward_kind: str) -> list[float] | None:
    """The verifiable reward of each response, or None when some example has no answer."""
    if not rollouts.meta or any(e.answer is None for e in rollouts.meta):
        return None
    reward = make_reward(reward_kind)
    return [reward(t, e.answer) for t, e in zip(texts, rollouts.meta)]


def advantages_for(c: StepSettings, rewards: list[float] | None) -> tuple[torch.Tensor | None, dict]:
    """Per-response GRPO advantages and reward metrics (None for other modes)."""
    if c.mode != "grpo":
        return None, {}
    rewards = torch.tensor(rewards)
    adv = group_advantages(rewards, c.group)
    return adv, {"reward/mean": rewards.mean().item(), "reward/std": rewards.std(unbiased=False).item()}


# ----------------------------------------------------------------------------- one micro-batch

def micro_batch_backward(s: Session, c: StepSettings, state: RunState, rollouts: Rollouts, rows: slice,
                         mask_override: torch.Tensor | None, advantages: torch.Tensor | None, step_tokens: torch.Tensor,
                         timer: PhaseTimer | None = None):
    """Loss and backward for one micro-batch (gradients accumulate in the student);
    returns the ObjectiveResult and the loss mask used."""
    timer = timer or PhaseTimer()
    device = next(s.student.parameters()).device
    prompts, responses = rollouts.prompt_ids[rows], rollouts.response_ids[rows]
    packed = pack(prompts, responses, s.tokenizer.pad_token_id, device)
    width = packed.response_ids.shape[1]
    mask = packed.response_mask if mask_override is None else packed.response_mask * mask_override.to(device)
    inputs = ObjectiveInputs(
        ids=packed.response_ids,
        behaviour_logprobs=pad_rows(rollouts.sampler_logprobs[rows], width).to(device) if c.mode != "sft" else None,
        advantages=None if advantages is None else advantages[rows].to(device).unsqueeze(-1).expand(-1, width).contiguous())
    if state.needs_teacher:
        shares_student = any(m is s.student for m in local_models(s.teacher))   # live / LoRA self-teacher: FSDP gathers
        with timer("teacher"), s.dist.full_weights() if shares_student else contextlib.nullcontext():
            scores = s.teacher.score(rollouts.meta[rows], responses)      # lazy for a local teacher: no (N, T, V)
        inputs = replace(inputs, teacher=scores.to(device))
    with timer("student_forward"):      # the chunked path also forms the lm-head gradient here
        head = student_head(s.student_forward, packed, s.vocab)
        weights = token_weights(mask, step_tokens)                   # (N, R): sums to the step's token mean
        if c.chunked:
            result = chunked_objective_loss(state.objective, head, inputs, weights, chunk_size=c.chunk_rows or None)
        else:
            result = objective_loss(state.objective, head.logits(head.hidden), inputs, weights)
    with timer("backward"):
        result.loss.backward()
    return result, mask


# ----------------------------------------------------------------------------- one step

@dataclass
class StepOutcome:
    metrics: dict
    finite: bool
    texts: list[str]            # the step's decoded responses (word clouds, samples.jsonl)


def train_step(s: Session, c: StepSettings, state: RunState, stream, optimizer, scheduler,
               timer: PhaseTimer | None = None) -> StepOutcome:
    t0 = time.perf_counter()
    timer = timer or PhaseTimer()
    salt = int(torch.randint(0, 2**31, ()))         # the same on every rank: the global RNG is not used by sampling
    with timer("rollout"):
        items, first = s.dist.shard(stream.take(c.prompts_per_step))
        with s.dist.full_weights():
            rollouts = collect(s, c, items, state.max_new_tokens, salt, first)
        texts = s.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
        rewards = answer_rewards(rollouts, texts, c.reward_kind)
    advantages, reward_metrics = advantages_for(c, rewards)
    keep, masked, local_tokens = loss_mask(s, c, rollouts)
    student_rows = len(rollouts) if rollouts.from_student is None else sum(rollouts.from_student)
    global_tokens, student_rows, all_rows = s.dist.sum([local_tokens, student_rows, len(rollouts)])  # sync, once
    step_tokens = torch.tensor(max(1.0, global_tokens))
    sources = {} if c.mode == "sft" else {"rollout/student_fraction": student_rows / max(1.0, all_rows)}
    s.student.train()
    losses, sums, counts = [], {}, []
    slices = _row_slices(len(rollouts), c.micro_batch)
    for i, rows in enumerate(slices):
        sub_keep = None if keep is None else keep[rows][:, :_width(rollouts, rows)]
        with s.dist.accumulate(s.student_forward, last=i == len(slices) - 1):
            result, mask = micro_batch_backward(s, c, state, rollouts, rows, sub_keep, advantages, step_tokens, timer)
        with timer("diagnostics"):      # kept as tensors: one host sync per step, not one per metric
            losses.append(result.loss.detach())
            counts.append(mask.sum())
            gap = entropy_gap(result.metrics)
            for k, v in {**result.metrics, **({"entropy_gap": gap} if gap is not None else {})}.items():
                sums.setdefault(k, []).append((v * mask).sum())
            for k, v in per_teacher_sums(s.teacher, rollouts.meta[rows], result, mask).items():
                sums.setdefault(k, []).append(v)
    s.student.eval()
    with timer("optimizer"):
        keys = sorted(sums)                           # sync: global loss and token sums, in one transfer
        # float64 before summing: the same sum whichever rank held which micro-batch
        total = lambda parts: torch.stack(parts).double().sum()
        local = torch.stack([total(losses), total(counts)] + [total(sums[k]) for k in keys]).tolist()
        loss_total, counts, *values = s.dist.sum(local)
        sums = dict(zip(keys, values))
        norm, finite = optimizer_step(s, c, optimizer, scheduler, loss_total)
    with timer("diagnostics"):
        rollouts, texts, rewards, masked = _global_view(s, rollouts, texts, rewards, masked)   # texts: every rank's
        responses, token_means, lengths = _step_diagnostics(s, c, state.max_new_tokens, rollouts, texts, rewards, sums,
                                                            counts, reward_metrics, advantages)
    metrics = {"train/loss": loss_total, "train/grad_norm": norm, "train/lr": optimizer.param_groups[0]["lr"],
               "train/skipped": int(not finite), "train/epoch": stream.epochs_done(),
               "rollout/length_mean": responses["length_mean"], "rollout/eos_rate": responses["eos_rate"],
               "rollout/tokens": int(lengths.sum()), "rollout/masked_special": masked, **sources,
               **timer.metrics(), "time/step_s": time.perf_counter() - t0,
               **reward_metrics, **getattr(s.sampler, "metrics", {}), **{f"diag/{k}": v for k, v in responses.items()},
               **{f"diag/{k}": v for k, v in token_means.items()}}
    # Every rank logs nothing but acts on these (guard, non-finite stop): one set for all. The
    # sums above are already global; rank 0's timings and sampler mismatch stand for the rest.
    return StepOutcome(s.dist.broadcast(metrics), finite, texts)


def optimizer_step(s: Session, c: StepSettings, optimizer, scheduler, loss_total: float) -> tuple[float, bool]:
    """Clip and step when loss and gradient norm are finite (else skip); sync teacher and sampler.
    Returns (gradient norm, whether the step was taken)."""
    norm = grad_norm(s.student, c.optim.max_grad_norm)
    finite = math.isfinite(loss_total) and math.isfinite(norm)
    if finite:
        optimizer.step()
        scheduler.step()
        if s.teacher is not None:
            s.teacher.after_step(s.student)
        if hasattr(s.sampler, "sync_weights"):           # vLLM holds its own copy of the student
            with s.dist.full_weights():
                s.sampler.sync_weights(s.student)
    optimizer.zero_grad(set_to_none=True)
    return norm, finite


def _step_diagnostics(s: Session, c: StepSettings, max_new_tokens: int, rollouts: Rollouts, texts: list[str], rewards,
                      sums: dict, counts: float, reward_metrics: dict, advantages) -> tuple[dict, dict, torch.Tensor]:
    """Response-level diagnostics over the step's responses (every rank's) and the token means.

    Adds rule rate, accuracy and (multi-rank GRPO) global reward statistics to reward_metrics.
    """
    if advantages is not None and s.dist.world > 1:
        reward_metrics.update(advantages_for(c, rewards)[1])     # reward/mean, std over every rank's responses
    lengths = torch.tensor([len(r) for r in rollouts.response_ids], dtype=torch.float32)
    if c.diagnostics:
        responses = response_diagnostics(rollouts.response_ids, texts, rollouts.finished, max_new_tokens, c.hedge_words)
    else:
        responses = {"length_mean": float(lengths.mean()), "eos_rate": sum(rollouts.finished) / len(rollouts)}
    if c.check:
        check = make_check(c.check)
        reward_metrics["rollout/rule_rate"] = sum(map(check, texts)) / len(texts)
    if rewards is not None:
        reward_metrics["rollout/accuracy"] = sum(rewards) / len(rewards)
    token_means = per_teacher_means({k: v / max(counts, 1.0) for k, v in sums.items()})
    if "p_k" in token_means and token_means.get("q_k", 0) > 0:
        # mean P_K / mean Q_K: the per-token ratio's mean is dominated by tokens where Q_K ~ 0
        token_means["pk_qk_ratio"] = token_means["p_k"] / token_means["q_k"]
    return responses, token_means, lengths


def _global_view(s: Session, rollouts: Rollouts, texts: list[str], rewards: list[float] | None, masked: int):
    """Every rank's responses (ids, finished), texts, rewards and masked count, for the step metrics."""
    if s.dist.world == 1:
        return rollouts, texts, rewards, masked
    ids, finished = s.dist.gather(rollouts.response_ids), s.dist.gather(rollouts.finished)
    texts = s.dist.gather(texts)
    rewards = None if rewards is None else s.dist.gather(rewards)
    return Rollouts([], ids, [], finished), texts, rewards, int(s.dist.sum([masked])[0])


def _row_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _width(rollouts: Rollouts, rows: slice) -> int:
    return max(1, max(len(r) for r in rollouts.response_ids[rows]))
