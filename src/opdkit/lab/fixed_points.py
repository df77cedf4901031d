"""Where each objective drives the student: gradient descent on logits against a fixed teacher.

This is Many Faces' mechanism 2 in its smallest form. No model, no sampling: P positions,
a vocabulary of V tokens, a fixed peaked teacher q per position, free student logits z
descended on each objective. Each run reports where P_K / Q_K and the shape of p on K end
up, beside the fixed point MATH.md derives:
  unnormalised top-K RKL (fixed teacher support)  P_K / Q_K -> 1/e
  unnormalised top-K RKL (student's own top-K)    the support moves; mass keeps leaking
  stop-grad top-K RKL                             p = q on K  (P_K / Q_K -> 1)
  renormalised top-K RKL                          p/P_K = q/Q_K on K, P_K free
  top-K RKL + tail bucket                         p = q on K
  teacher top-K FKL                               p = q/Q_K on K (P_K -> 1)
  full-vocabulary RKL                             p = q

Run: opdkit lab fixed-points --out runs/fixed-points
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from opdkit.objectives import make_objective
from opdkit.objectives.scores import ObjectiveInputs, TeacherScores


@dataclass(frozen=True)
class Case:
    label: str
    objective: str
    options: dict
    expected_ratio: float | None    # P_K / Q_K at the fixed point; None where it is free
    shape_matched: bool             # p/P_K = q/Q_K on K at the fixed point
    note: str
    init: str = "random"            # "random" small logits, or "teacher": start at p = q
    expected_p_k: float | None = None


CASES = (
    Case("unnorm, teacher top-K", "topk_rkl_unnorm", {"support": "teacher"}, 1 / math.e, True,
         "the '+1' term: p = q/e on K"),
    Case("unnorm, from p = q", "topk_rkl_unnorm", {"support": "teacher"}, 1 / math.e, True,
         "leaves the teacher it starts at", init="teacher"),
    Case("unnorm, student top-K, p = q", "topk_rkl_unnorm", {"support": "student"}, None, False,
         "support re-chosen each step: mass leaks, entropy rises", init="teacher"),
    Case("stop-grad, teacher top-K", "topk_rkl_sg", {"support": "teacher"}, 1.0, True, "p = q on K"),
    Case("stop-grad, student top-K, p = q", "topk_rkl_sg", {"support": "student"}, 1.0, True,
         "zero gradient at the teacher: stays", init="teacher"),
    Case("renorm, teacher top-K", "topk_rkl_renorm", {"support": "teacher"}, None, True,
         "shape matched, P_K free"),
    Case("tail bucket, teacher top-K", "topk_rkl_tail", {"support": "teacher"}, 1.0, True, "p = q on K"),
    Case("teacher top-K FKL", "topk_fkl_teacher", {}, None, True, "p = q/Q_K on K: P_K -> 1",
         expected_p_k=1.0),
    Case("full-vocabulary RKL", "rkl", {}, 1.0, True, "p = q"),
)


@dataclass
class Trajectory:
    label: str
    steps: list[int] = field(default_factory=list)
    pk_over_qk: list[float] = field(default_factory=list)
    p_k: list[float] = field(default_factory=list)
    shape_error: list[float] = field(default_factory=list)   # max |log p~ - log q~| on K
    rkl: list[float] = field(default_factory=list)            # full KL(p || q)
    entropy: list[float] = field(default_factory=list)


def make_teacher(positions: int, vocab: int, sharpness: float, seed: int) -> torch.Tensor:
    """(P, V) teacher log-probs: peaked enough that the top-K carries most, not all, mass."""
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(positions, vocab, generator=g) * sharpness, dim=-1)


def descend(case: Case, teacher_logprobs: torch.Tensor, k: int, steps: int, lr: float, seed: int,
            record_every: int = 25, settle: int = 0) -> tuple[Trajectory, torch.Tensor]:
    """Adam on free student logits (P, V) against a fixed teacher; returns the trajectory and final logits.

    At a constant LR Adam keeps throwing off spikes around the fixed point (its step size does not
    shrink with the gradient), so the last iterate depends on the CPU's float kernels. `settle` > 0
    anneals the LR to 0 along a cosine over the last `settle` steps, so the last iterate is the
    settled point on any CPU.
    """
    g = torch.Generator().manual_seed(seed + 1)
    if case.init == "teacher":
        logits = teacher_logprobs.clone().requires_grad_()
    else:
        logits = (torch.randn(teacher_logprobs.shape, generator=g) * 0.1).requires_grad_()
    options = {"k": k, **case.options} if case.objective != "rkl" else {}
    objective = make_objective(case.objective, **options)
    teacher_topk = teacher_logprobs.topk(k, dim=-1)
    scores = TeacherScores(logprobs=teacher_logprobs, topk_ids=teacher_topk.indices,
                           topk_logprobs=teacher_topk.values)
    ids = teacher_topk.indices[:, 0]          # unused by these objectives; any valid id
    inputs = ObjectiveInputs(ids, scores)
    optimizer = torch.optim.Adam([logits], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_settling, steps=steps, settle=settle)) \
        if settle else None
    traj = Trajectory(case.label)
    for step in range(steps + 1):
        out = objective(logits, inputs)
        if step % record_every == 0 or step == steps:
            _record(traj, step, logits.detach(), teacher_logprobs, case, k)
        if step == steps:
            break
        optimizer.zero_grad()
        out.loss.mean().backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return traj, logits.detach()


def _settling(step: int, steps: int, settle: int) -> float:
    """LR factor: 1, then a cosine from 1 to 0 over the last `settle` of `steps` steps."""
    into = step - (steps - settle)
    return 1.0 if into <= 0 else 0.5 * (1.0 + math.cos(math.pi * min(into, settle) / settle))


def _record(traj: Trajectory, step: int, logits: torch.Tensor, logq: torch.Tensor, case: Case, k: int) -> None:
    logp = torch.log_softmax(logits, -1)
    # Support used for the report: the teacher's top-K, except for student-top-K cases.
    ids = (logp if case.options.get("support") == "student" else logq).topk(k, -1).indices
    lp, lq = logp.gather(-1, ids), logq.gather(-1, ids)
    log_pk, log_qk = lp.logsumexp(-1), lq.logsumexp(-1)
    shape = ((lp - log_pk[:, None]) - (lq - log_qk[:, None])).abs().amax(-1)
    traj.steps.append(step)
    traj.pk_over_qk.append(float((log_pk - log_qk).exp().mean()))
    traj.p_k.append(float(log_pk.exp().mean()))
    traj.shape_error.append(float(shape.mean()))
    traj.rkl.append(float((logp.exp() * (logp - logq)).sum(-1).mean()))
    traj.entropy.append(float(-(logp.exp() * logp).sum(-1).mean()))


def verdict(case: Case, traj: Trajectory, tol: float = 0.03) -> str:
    ratio, shape = traj.pk_over_qk[-1], traj.shape_error[-1]
    ok = True
    if case.expected_ratio is not None:
        ok &= abs(ratio - case.expected_ratio) <= tol
    if case.shape_matched:
        ok &= shape <= 0.05
    if case.expected_p_k is not None:
        ok &= abs(traj.p_k[-1] - case.expected_p_k) <= tol
    if case.expected_ratio is None and not case.shape_matched:   # the leaking case
        ok &= ratio < 0.5 and traj.entropy[-1] > traj.entropy[0] + 0.1
    return "as derived" if ok else "DIFFERS"


def run(out_dir: Path | None, positions: int = 64, vocab: int = 100, k: int = 5, steps: int = 3000,
        lr: float = 0.05, seed: int = 0, sharpness: float = 2.0) -> list[dict]:
    teacher = make_teacher(positions, vocab, sharpness, seed)
    q_k = float(teacher.topk(k, -1).values.logsumexp(-1).exp().mean())
    rows = []
    trajectories = []
    for case in CASES:
        traj, _ = descend(case, teacher, k, steps, lr, seed)
        trajectories.append(traj)
        rows.append({"case": case.label, "objective": case.objective, **case.options,
                     "pk_over_qk": traj.pk_over_qk[-1], "expected_pk_over_qk": case.expected_ratio,
                     "p_k": traj.p_k[-1], "q_k": q_k, "shape_error": traj.shape_error[-1],
                     "rkl": traj.rkl[-1], "entropy": traj.entropy[-1], "note": case.note,
                     "verdict": verdict(case, traj)})
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "fixed_points.json").write_text(json.dumps(
            {"settings": {"positions": positions, "vocab": vocab, "k": k, "steps": steps, "lr": lr,
                          "seed": seed, "sharpness": sharpness},
             "rows": rows, "trajectories": [asdict(t) for t in trajectories]}, indent=1))
        plot(trajectories, out_dir / "fixed_points.png")
    return rows


def plot(trajectories: list[Trajectory], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for t in trajectories:
        axes[0].plot(t.steps, t.pk_over_qk, label=t.label)
        axes[1].plot(t.steps, t.shape_error, label=t.label)
        axes[2].plot(t.steps, t.entropy, label=t.label)
    axes[0].axhline(1 / math.e, color="k", ls=":", lw=1)
    axes[0].text(0, 1 / math.e, " 1/e", va="bottom")
    axes[0].set(title="P_K / Q_K on the support", xlabel="step")
    axes[1].set(title="shape error max|log p~ - log q~| on K", xlabel="step", yscale="log")
    axes[2].set(title="student entropy (nats)", xlabel="step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(rows: list[dict]) -> str:
    head = f"{'case':<32} {'P_K/Q_K':>8} {'expected':>8} {'shape err':>9} {'KL(p||q)':>9} {'H(p)':>6}  verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        exp = "free" if r["expected_pk_over_qk"] is None else f"{r['expected_pk_over_qk']:.3f}"
        lines.append(f"{r['case']:<32} {r['pk_over_qk']:>8.3f} {exp:>8} {r['shape_error']:>9.3g} "
                     f"{r['rkl']:>9.3f} {r['entropy']:>6.2f}  {r['verdict']} ({r['note']})")
    return "\n".join(lines)
