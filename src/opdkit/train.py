"""The one training loop for sft, distill (OPD), self-distill (OPSD) and grpo.

Per optimizer step: take prompts -> responses (sampled by the student; for SFT, given or
teacher-written) -> rewards and advantages (GRPO) -> count the step's loss-bearing tokens
-> per micro-batch: teacher scores, student forward, objective on hidden states in chunks,
backward with weights mask / step_tokens (so accumulation is token-exact) -> clip, step,
schedule -> metrics -> checkpoint. A non-finite loss or gradient skips the step (logged);
`run.max_bad_steps` in a row stop the run. `resume=True` continues from the newest
complete checkpoint with the same weights, optimizer, RNG and data position.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from opdkit import checkpoint
from opdkit.config import Config, config_from_dict, save_config, to_dict
from opdkit.data import batches
from opdkit.logprobs import chunked_objective_loss, objective_loss
from opdkit.metrics import MetricLog
from opdkit.objectives import group_advantages
from opdkit.packing import pack, pad_rows, response_hidden
from opdkit.rewards import make_reward
from opdkit.rollout import Rollouts
from opdkit.scores import ObjectiveInputs, TeacherScores
from opdkit.session import Session, build_session, new_stream
from opdkit.teachers import head_of


class TrainingError(RuntimeError):
    """The run cannot continue (repeated non-finite steps, mismatched resume)."""


# ----------------------------------------------------------------------------- responses

def collect(s: Session, items: list) -> Rollouts:
    """Responses for one step's prompts (G per prompt); `meta` holds each response's example."""
    cfg = s.cfg
    group = cfg.rollout.samples_per_prompt if cfg.mode != "sft" else 1
    expanded = [it for it in items for _ in range(group)]
    if cfg.mode == "sft":
        return sft_targets(s, expanded)
    parts = [s.sampler.sample(s.student, [it.prompt_ids for it in chunk], max_new_tokens=cfg.rollout.max_new_tokens,
                              temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                              record_topk=cfg.rollout.record_topk)
             for chunk in batches(expanded, cfg.optim.micro_batch)]
    out = merge(parts)
    out.meta = [it.example for it in expanded]
    return out


def sft_targets(s: Session, items: list) -> Rollouts:
    """Given responses (+EOS), or greedy answers written by the teacher from its (PI) prompt."""
    prompts = [it.prompt_ids for it in items]
    if s.cfg.teacher.sft_traces == "data":
        eos = s.tokenizer.eos_token_id
        responses = [list(s.tokenizer(it.example.response, add_special_tokens=False)["input_ids"]) + [eos]
                     for it in items]
    else:
        teacher_prompts = [s.teacher.renderer(it.example) for it in items]
        with s.teacher.context():       # a LoRA self-teacher writes with its adapters off
            written = merge([s.sampler.sample(s.teacher.model(), chunk, max_new_tokens=s.cfg.rollout.max_new_tokens,
                                              greedy=True)
                             for chunk in batches(teacher_prompts, s.cfg.optim.micro_batch)])
        responses = written.response_ids
    zeros = [torch.zeros(len(r)) for r in responses]
    return Rollouts(prompts, responses, zeros, [bool(r) and r[-1] == s.tokenizer.eos_token_id for r in responses],
                    meta=[it.example for it in items])


def merge(parts: list[Rollouts]) -> Rollouts:
    out = Rollouts([], [], [], [])
    for p in parts:
        out.prompt_ids += p.prompt_ids
        out.response_ids += p.response_ids
        out.sampler_logprobs += p.sampler_logprobs
        out.finished += p.finished
    return out


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


def advantages_for(s: Session, rollouts: Rollouts) -> tuple[torch.Tensor | None, dict]:
    """Per-response GRPO advantages and reward metrics (None for other modes)."""
    if s.cfg.mode != "grpo":
        return None, {}
    reward = make_reward(s.cfg.reward.kind)
    texts = s.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
    rewards = torch.tensor([reward(t, e.answer) for t, e in zip(texts, rollouts.meta)])
    adv = group_advantages(rewards, s.cfg.rollout.samples_per_prompt)
    return adv, {"reward/mean": rewards.mean().item(), "reward/std": rewards.std(unbiased=False).item()}


# ----------------------------------------------------------------------------- one micro-batch

def micro_batch_loss(s: Session, rollouts: Rollouts, rows: slice, mask_override: torch.Tensor | None,
                     advantages: torch.Tensor | None, step_tokens: torch.Tensor):
    """Backward for one micro-batch; returns the ObjectiveResult and the loss mask used."""
    device = next(s.student.parameters()).device
    prompts, responses = rollouts.prompt_ids[rows], rollouts.response_ids[rows]
    packed = pack(prompts, responses, s.tokenizer.pad_token_id, device)
    width = packed.response_ids.shape[1]
    mask = packed.response_mask if mask_override is None else packed.response_mask * mask_override.to(device)
    inputs = ObjectiveInputs(
        ids=packed.response_ids,
        behaviour_logprobs=pad_rows(rollouts.sampler_logprobs[rows], width).to(device) if s.cfg.mode != "sft" else None,
        advantages=None if advantages is None else advantages[rows].to(device).unsqueeze(-1).expand(-1, width).contiguous())
    teacher = s.teacher.score(rollouts.meta[rows], responses) if s.needs_teacher else None
    head = head_of(s.student, response_hidden(s.student, packed), s.vocab)
    weights = mask / step_tokens
    if s.cfg.objective.chunked:
        result = chunked_objective_loss(s.objective, head, inputs, weights, teacher=teacher)
    else:
        if teacher is not None:
            logq = torch.log_softmax(teacher.logits(teacher.hidden).float(), -1)
            inputs = ObjectiveInputs(inputs.ids, TeacherScores(logprobs=logq), inputs.behaviour_logprobs, inputs.advantages)
        result = objective_loss(s.objective, head.logits(head.hidden), inputs, weights)
    result.loss.backward()
    return result, mask


# ----------------------------------------------------------------------------- one step

@dataclass
class StepOutcome:
    metrics: dict
    finite: bool


def train_step(s: Session, stream, optimizer, scheduler) -> StepOutcome:
    cfg, t0 = s.cfg, time.perf_counter()
    items = stream.take(cfg.optim.prompts_per_step)
    rollouts = collect(s, items)
    t_rollout = time.perf_counter() - t0
    advantages, reward_metrics = advantages_for(s, rollouts)
    width = max(1, max(len(r) for r in rollouts.response_ids))
    special = set(s.report.masked_special_ids) if cfg.objective.mask_special else set()
    keep = first_special_mask(rollouts.response_ids, special, width) if special else None
    lengths = torch.tensor([len(r) for r in rollouts.response_ids], dtype=torch.float32)
    masked = 0 if keep is None else int((keep == 0).sum())
    step_tokens = torch.tensor(max(1.0, float(lengths.sum()) - masked))
    s.student.train()
    loss_total, sums, counts = 0.0, {}, 0.0
    for rows in _row_slices(len(rollouts), cfg.optim.micro_batch):
        sub_keep = None if keep is None else keep[rows]
        result, mask = micro_batch_loss(s, rollouts, rows, None if sub_keep is None else sub_keep[:, :_width(rollouts, rows)],
                                        advantages, step_tokens)
        loss_total += float(result.loss.detach())
        counts += float(mask.sum())
        for k, v in result.metrics.items():
            sums[k] = sums.get(k, 0.0) + float((v * mask).sum())
    s.student.eval()
    grad_norm = _grad_norm(s.student, cfg.optim.max_grad_norm)
    finite = math.isfinite(loss_total) and math.isfinite(grad_norm)
    if finite:
        optimizer.step()
        scheduler.step()
        if s.teacher is not None:
            s.teacher.after_step(s.student)
    optimizer.zero_grad(set_to_none=True)
    metrics = {"train/loss": loss_total, "train/grad_norm": grad_norm, "train/lr": optimizer.param_groups[0]["lr"],
               "train/skipped": int(not finite), "train/epoch": stream.epochs_done(),
               "rollout/length_mean": float(lengths.mean()), "rollout/eos_rate": sum(rollouts.finished) / len(rollouts),
               "rollout/tokens": int(lengths.sum()), "rollout/masked_special": masked,
               "time/rollout_s": t_rollout, "time/step_s": time.perf_counter() - t0,
               **reward_metrics, **{f"objective/{k}": v / max(counts, 1.0) for k, v in sums.items()}}
    return StepOutcome(metrics, finite)


def _row_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _width(rollouts: Rollouts, rows: slice) -> int:
    return max(1, max(len(r) for r in rollouts.response_ids[rows]))


def _grad_norm(model, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in params])))


# ----------------------------------------------------------------------------- optimizer

def make_optimizer(s: Session):
    o = s.cfg.optim
    params = [p for p in s.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, o.warmup_steps, o.steps, o.schedule))


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak LR before optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- the run

def checkpoint_modules(s: Session) -> dict:
    return {"student": s.student, **(s.teacher.checkpoint_modules() if s.teacher is not None else {})}


def save_checkpoint(s: Session, run_dir: Path, step: int, stream, optimizer, scheduler, bad_streak: int) -> Path:
    state = {"step": step, "stream": stream.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": checkpoint.rng_state(), "bad_streak": bad_streak}
    return checkpoint.save(run_dir, step, checkpoint_modules(s), state, s.cfg.run.keep_checkpoints)


def restore(s: Session, run_dir: Path, log: MetricLog, stream, optimizer, scheduler) -> tuple[int, int]:
    """(step, bad_streak) from the newest complete checkpoint; (0, 0) when there is none."""
    path = checkpoint.latest(run_dir)
    if path is None:
        return 0, 0
    state = checkpoint.load(path, checkpoint_modules(s))
    stream.load_state_dict(state["stream"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    checkpoint.set_rng_state(state["rng"])
    log.truncate_after(state["step"])
    log.event(state["step"], "resumed", checkpoint=str(path))
    return state["step"], state["bad_streak"]


def check_resume_config(cfg: Config, run_dir: Path) -> None:
    import yaml
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old = to_dict(config_from_dict(yaml.safe_load(saved.read_text())))
    new = to_dict(cfg)
    # Only the length of the run may change on resume; everything else must match.
    old["optim"]["steps"] = new["optim"]["steps"]
    old["run"]["progress"] = new["run"]["progress"]
    if old != new:
        diff = [f"{sec}.{k}" for sec in new if isinstance(new[sec], dict) for k in new[sec] if old[sec].get(k) != new[sec][k]]
        raise TrainingError(f"--resume with a different config than {saved}: {diff or ['mode']} changed; "
                            f"start a new run directory or restore the original values")


def run(cfg: Config, resume: bool = False, session: Session | None = None) -> list[dict]:
    """Train; returns the metrics rows logged by this call."""
    run_dir = Path(cfg.run.out)
    if not resume and checkpoint.latest(run_dir) is not None:
        raise TrainingError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose a new run.out")
    if resume:
        check_resume_config(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    s = session or build_session(cfg)
    save_config(cfg, run_dir / "config.yaml")
    log = MetricLog(run_dir, cfg.run.trackers)
    stream = new_stream(s)
    optimizer, scheduler = make_optimizer(s)
    step, bad_streak = restore(s, run_dir, log, stream, optimizer, scheduler) if resume else (0, 0)
    if step == 0:
        from opdkit.evaluate import identity_self_test
        if resume:
            log.truncate_after(-1)       # an attempt that died before its first checkpoint left rows
        identity = identity_self_test(s)
        if not identity < 1e-4:
            raise TrainingError(f"identity self-test failed: the student scored against itself gives KL {identity:.3g} "
                                f"(expected 0); the scoring path misaligns prompts or positions")
        log.event(0, "start", skipped_prompts=s.skipped_prompts, notes=s.report.notes, identity_kl=identity)
        if cfg.run.eval_every and cfg.data.eval:       # the "before" numbers, logged as step 0
            from opdkit.evaluate import evaluate_session
            log.log(0, {f"eval/{k}": v for k, v in evaluate_session(s, teacher_side=True).items()})
    return _loop(s, run_dir, log, stream, optimizer, scheduler, step, bad_streak)


def _loop(s: Session, run_dir: Path, log: MetricLog, stream, optimizer, scheduler, step: int, bad_streak: int) -> list[dict]:
    from tqdm import tqdm
    from opdkit.evaluate import evaluate_session
    cfg, rows = s.cfg, []
    bar = tqdm(total=cfg.optim.steps, initial=step, desc=cfg.mode, disable=not cfg.run.progress, dynamic_ncols=True)
    while step < cfg.optim.steps:
        outcome = train_step(s, stream, optimizer, scheduler)
        step += 1
        bad_streak = 0 if outcome.finite else bad_streak + 1
        metrics = {**outcome.metrics, "data/skipped_prompts": s.skipped_prompts}
        if cfg.run.eval_every and step % cfg.run.eval_every == 0 and cfg.data.eval:
            metrics.update({f"eval/{k}": v for k, v in evaluate_session(s).items()})
        log.log(step, metrics)
        rows.append({"step": step, **metrics})
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", len=f"{metrics['rollout/length_mean']:.1f}")
        if not outcome.finite:
            log.event(step, "skipped_nonfinite", loss=str(metrics["train/loss"]), grad_norm=str(metrics["train/grad_norm"]))
            if bad_streak >= cfg.run.max_bad_steps:
                save_checkpoint(s, run_dir, step, stream, optimizer, scheduler, bad_streak)
                raise TrainingError(f"{bad_streak} non-finite steps in a row (loss {metrics['train/loss']}, grad norm "
                                    f"{metrics['train/grad_norm']}); the weights were not updated by them. Check the "
                                    f"teacher's logits and lower optim.lr; events are in {log.events}")
        if step % cfg.run.save_every == 0 or step == cfg.optim.steps:
            path = save_checkpoint(s, run_dir, step, stream, optimizer, scheduler, bad_streak)
            log.event(step, "checkpoint", path=str(path))
    bar.close()
    return rows
