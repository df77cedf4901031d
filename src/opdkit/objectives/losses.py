"""Every token-level distillation objective, as small pure torch functions picked by name.

Each objective maps student logits (..., V) and `ObjectiveInputs` to an `ObjectiveOutput`:
a per-token loss (...,) and per-token diagnostics (...,) computed from the same tensors.
Reduction over tokens lives in `opdkit.objectives.reduction`; nothing here knows about masks, batches
or configs. The math, gradients and fixed points are in ../shared/MATH.md; `OBJECTIVES`
below is the one table (`opdkit objectives` prints it).

Conventions: p = softmax(student logits), q = teacher, both at the same position;
RKL = KL(p || q), FKL = KL(q || p). Logits are upcast to fp32 before any log-softmax.
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from opdkit.objectives import topk as topk_lib
from opdkit.objectives.chunks import chunk_rkl
from opdkit.objectives.scores import ObjectiveInputs, ObjectiveOutput, check_shapes, upcast
from opdkit.objectives.scores import require as _require_fields

# ----------------------------------------------------------------------------- helpers

def _logp(logits: Tensor) -> Tensor:
    return F.log_softmax(upcast(logits), dim=-1)


def require(objective: str, inputs: ObjectiveInputs, needs: tuple[str, ...]) -> None:
    """`opdkit.objectives.scores.require`, naming the objectives a top-k-only teacher supports (from the table)."""
    _require_fields(objective, inputs, needs, hint=topk_teacher_objectives())


def _gather(t: Tensor, ids: Tensor) -> Tensor:
    return t.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)


def teacher_logprob_of_sampled(inputs: ObjectiveInputs, objective: str) -> Tensor:
    """log q(y_t): from the teacher's sampled-token scores, else from its full log-probs."""
    t = inputs.teacher
    if t.sampled_logprobs is not None:
        return upcast(t.sampled_logprobs)
    if t.logprobs is not None:
        return _gather(upcast(t.logprobs), inputs.ids)
    require(objective, inputs, ("sampled_logprobs",))
    raise AssertionError("unreachable")


def policy_gradient_loss(logp_y: Tensor, advantage: Tensor, behaviour_logprobs: Tensor | None,
                         clip: float | None) -> Tensor:
    """-A * log p(y), or the importance-weighted -rho * A against a behaviour policy.

    With `clip` the PPO form -min(rho A, clip(rho, 1-eps, 1+eps) A) is used. The advantage
    is treated as a constant (stop-gradient) in every form.
    """
    advantage = advantage.detach()
    if behaviour_logprobs is None:
        return -advantage * logp_y
    ratio = torch.exp(logp_y - upcast(behaviour_logprobs))
    if clip is None:
        return -ratio * advantage
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip)
    return -torch.minimum(ratio * advantage, clipped * advantage)


def group_advantages(rewards: Tensor, group_size: int, scale_by_std: bool = False,
                     eps: float = 1e-6) -> Tensor:
    """GRPO advantages: reward minus its group's mean (optionally / group std).

    rewards: (B * G,) with each prompt's G samples contiguous. Returns (B * G,).
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
                         f"got shape {tuple(rewards.shape)}")
    grouped = upcast(rewards).view(-1, group_size)                 # (B, G)
    adv = grouped - grouped.mean(-1, keepdim=True)
    if scale_by_std:
        adv = adv / (grouped.std(-1, keepdim=True, unbiased=False) + eps)
    return adv.view(-1)


# ----------------------------------------------------------------------------- objectives

def sampled_rkl(logits: Tensor, inputs: ObjectiveInputs, clip: float | None = None,
                diagnostic_k: int = 20) -> ObjectiveOutput:
    """Sampled-token RKL in policy-gradient form: -sg(log q(y) - log p(y)) * log p(y).

    Its expected gradient over y ~ p is the full-vocabulary RKL gradient. Differentiating
    log p(y) - log q(y) directly (OOPD's "explicit" mode) has zero expected gradient: never.
    """
    logp = _logp(logits)
    logp_y = _gather(logp, inputs.ids)
    reward = teacher_logprob_of_sampled(inputs, "sampled_rkl") - logp_y.detach()
    loss = policy_gradient_loss(logp_y, reward, inputs.behaviour_logprobs, clip)
    metrics = topk_lib.position_metrics(logp.detach(), inputs.teacher, diagnostic_k)
    metrics["reward"] = reward       # its sign and the teacher's rank of y: opdkit.engine.diagnostics.token_diagnostics
    return ObjectiveOutput(loss, metrics)


def _full_pair(logits: Tensor, inputs: ObjectiveInputs, name: str) -> tuple[Tensor, Tensor]:
    require(name, inputs, ("logprobs",))
    return _logp(logits), upcast(inputs.teacher.logprobs)


def _kl(logp_a: Tensor, logp_b: Tensor) -> Tensor:
    """KL(a || b) over the last axis; terms with a = 0 contribute 0 (even if b = 0)."""
    a = logp_a.exp()
    return torch.where(a > 0, a * (logp_a - logp_b), torch.zeros_like(a)).sum(-1)


def _with_metrics(loss: Tensor, logp: Tensor, inputs: ObjectiveInputs, k: int) -> ObjectiveOutput:
    return ObjectiveOutput(loss, topk_lib.position_metrics(logp.detach(), inputs.teacher, k))


def rkl(logits: Tensor, inputs: ObjectiveInputs, diagnostic_k: int = 20) -> ObjectiveOutput:
    """Full-vocabulary reverse KL, sum_v p (log p - log q). Fixed point p = q."""
    logp, logq = _full_pair(logits, inputs, "rkl")
    return _with_metrics(_kl(logp, logq), logp, inputs, diagnostic_k)


def fkl(logits: Tensor, inputs: ObjectiveInputs, diagnostic_k: int = 20) -> ObjectiveOutput:
    """Full-vocabulary forward KL, sum_v q (log q - log p). Fixed point p = q."""
    logp, logq = _full_pair(logits, inputs, "fkl")
    return _with_metrics(_kl(logq, logp), logp, inputs, diagnostic_k)


def _jsd_family(logp: Tensor, logq: Tensor, beta: float, normalised: bool) -> Tensor:
    """JSD(beta), or JSD(beta)/(beta(1-beta)); both are FKL at beta = 0 and RKL at beta = 1.

    With m = beta q + (1 - beta) p, JSD = beta KL(q||m) + (1 - beta) KL(p||m). The normalised
    form is written as KL(q||m)/(1-beta) + KL(p||m)/beta so no term is divided after it vanished.
    """
    if normalised and beta < torch.finfo(logp.dtype).eps ** 2:
        # The O(beta) distance from FKL is below the dtype's precision here, while exp(log beta + log q
        # - log p) underflows and drops the chi2 term: beta = 5e-324 gave loss 1.0 at p = q.
        beta = 0.0
    if beta == 0.0:
        return _kl(logq, logp)
    if beta == 1.0:
        return _kl(logp, logq)
    if normalised:
        return (_kl_to_mixture_over_weight(logq, logp, math.log1p(-beta), math.log(beta), 1.0 - beta)
                + _kl_to_mixture_over_weight(logp, logq, math.log(beta), math.log1p(-beta), beta))
    log_m = torch.logaddexp(logp + math.log1p(-beta), logq + math.log(beta))
    return beta * _kl(logq, log_m) + (1.0 - beta) * _kl(logp, log_m)


def _kl_to_mixture_over_weight(log_a: Tensor, log_b: Tensor, log_w: float, log_1mw: float, w: float) -> Tensor:
    """KL(a || (1-w) a + w b) / w, accurate as w -> 0 (where it tends to 0 like w chi2(b||a) / 2).

    Dividing the plain KL by w divides its rounding error (~1e-16 in fp64, ~1e-7 in fp32) by w too:
    at w = 1e-15 that gave losses of -0.06. Here each term is a (x - log1p(x)) / w >= 0 with
    1 + x = m/a, written as (b - a) - a log(m/a) / w (the (b - a) terms sum to 0), and log(m/a)
    is formed directly as logaddexp(log(1-w), log w + log b - log a), so its error scales with w.
    """
    a = log_a.exp()
    log_m_over_a = torch.logaddexp(torch.full_like(log_a, log_1mw), log_w + log_b - log_a)
    terms = (log_b.exp() - a) - a * log_m_over_a / w
    return torch.where(a > 0, terms, log_b.exp()).sum(-1)


def jsd(logits: Tensor, inputs: ObjectiveInputs, beta: float = 0.5,
        diagnostic_k: int = 20) -> ObjectiveOutput:
    """Generalised JSD(beta) = beta KL(q||m) + (1-beta) KL(p||m), TRL's convention.

    Like TRL's generalized_jsd_loss, beta = 0 returns FKL and beta = 1 returns RKL; the
    interior formula tends to 0 at both ends, so this family jumps there. Prefer jsd_norm.
    """
    logp, logq = _full_pair(logits, inputs, "jsd")
    return _with_metrics(_jsd_family(logp, logq, beta, normalised=False), logp, inputs, diagnostic_k)


def jsd_norm(logits: Tensor, inputs: ObjectiveInputs, beta: float = 0.5,
             diagnostic_k: int = 20) -> ObjectiveOutput:
    """JSD(beta) / (beta (1 - beta)): continuous on [0, 1], FKL at beta = 0, RKL at beta = 1."""
    logp, logq = _full_pair(logits, inputs, "jsd_norm")
    return _with_metrics(_jsd_family(logp, logq, beta, normalised=True), logp, inputs, diagnostic_k)


def kl_mix(logits: Tensor, inputs: ObjectiveInputs, lam: float = 0.5,
           diagnostic_k: int = 20) -> ObjectiveOutput:
    """lam * FKL + (1 - lam) * RKL (Decoupling's KL mixing). Fixed point p = q."""
    logp, logq = _full_pair(logits, inputs, "kl_mix")
    loss = lam * _kl(logq, logp) + (1.0 - lam) * _kl(logp, logq)
    return _with_metrics(loss, logp, inputs, diagnostic_k)


def topk_rkl(logits: Tensor, inputs: ObjectiveInputs, k: int = 20, support: str = "student",
             norm: str = "stopgrad", include_sampled: bool = False) -> ObjectiveOutput:
    """Top-K reverse KL on a per-position support K; see `opdkit.objectives.topk` for the four norms."""
    return topk_lib.topk_rkl(_logp(logits), inputs, k, support, norm, include_sampled)


def topk_fkl_teacher(logits: Tensor, inputs: ObjectiveInputs, k: int = 20) -> ObjectiveOutput:
    """Teacher top-K forward KL, sum_{K_T} q (log q - log p), p normalised over all V.

    Fixed point p = q / Q_K on K_T and 0 elsewhere: it over-concentrates the student.
    """
    return topk_lib.topk_fkl_teacher(_logp(logits), inputs, k)


def sft(logits: Tensor, inputs: ObjectiveInputs) -> ObjectiveOutput:
    """Negative log-likelihood of the given tokens (teacher-written or filtered traces)."""
    logp = _logp(logits)
    nll = -_gather(logp, inputs.ids)
    return ObjectiveOutput(nll, {"student_entropy": topk_lib.entropy(logp.detach())})


def grpo(logits: Tensor, inputs: ObjectiveInputs, clip: float | None = 0.2) -> ObjectiveOutput:
    """Policy gradient with group-relative advantages (inputs.advantages), PPO clip vs the sampler."""
    require("grpo", inputs, ("advantages",))
    logp = _logp(logits)
    logp_y = _gather(logp, inputs.ids)
    loss = policy_gradient_loss(logp_y, upcast(inputs.advantages), inputs.behaviour_logprobs, clip)
    return ObjectiveOutput(loss, {"student_entropy": topk_lib.entropy(logp.detach())})


# ----------------------------------------------------------------------------- the table

# What an objective needs from its teacher (the one place these capabilities are defined;
# the session, the served teacher, the runner, the guard rules and `opdkit objectives` read them).
FULL = "full"              # log q at any token id: a local teacher
TOP_K = "top-k"            # the teacher's top-k and its log q of the sampled token: any teacher, served ones too
NO_TEACHER = "none"        # sft, grpo
XTOK = "cross-tokenizer"   # what a teacher with another tokenizer provides: log Q per aligned chunk, and its top-k
                           # over the tokens both vocabularies share at chunk starts (opdkit.models.crosstok)
# Top-K RKL supports that need log q at the student's own top-K ids, which only a full teacher has.
FULL_SUPPORTS = ("student", "union")
# Which prefixes an objective can learn from (rollout.source, opdkit.engine.prefix).
ANY_PREFIX = "any"         # a divergence at each position: holds whoever wrote y_<t
RATIO = "ratio"            # policy gradient on y_t: needs y_t from the student or the unclipped ratio p/mu
STUDENT_ONLY = "student"   # group advantages over the student's own samples


@dataclass(frozen=True)
class ObjectiveSpec:
    fn: Callable[..., ObjectiveOutput]
    options: dict                 # fixed options that define this name (e.g. norm='none')
    teacher: str                  # FULL | TOP_K | NO_TEACHER: what the teacher must provide
    sound: bool | None            # zero loss and gradient when student == teacher (None: no teacher)
    description: str
    fixed_point: str
    support_decides: bool = False     # top-K RKL: FULL_SUPPORTS need FULL, the others TOP_K
    prefixes: str = ANY_PREFIX        # ANY_PREFIX | RATIO | STUDENT_ONLY: see prefix_problem
    cross_tokenizer: bool = False     # works with a teacher of another tokenizer (top-K ones: teacher-side supports)

    def needs(self, options: dict) -> str:
        """What the teacher must provide for this objective with `options` (FULL, TOP_K or NO_TEACHER)."""
        if self.support_decides:
            support = {**self.options, **options}.get("support", "student")
            return FULL if support in FULL_SUPPORTS else TOP_K
        return self.teacher


def _topk(fn, fixed, sound, description, fixed_point) -> ObjectiveSpec:
    """A member of the top-K RKL family: a top-k teacher suffices unless the support is the student's."""
    return ObjectiveSpec(fn, fixed, TOP_K, sound, description, fixed_point, support_decides=True, cross_tokenizer=True)


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "sampled_rkl": ObjectiveSpec(sampled_rkl, {}, TOP_K, True,
        "Sampled-token RKL, policy-gradient form -sg(log q - log p)(y) log p(y); optional ratio vs sampler",
        "p = q (unbiased estimate of the full RKL gradient)", prefixes=RATIO),
    "rkl": ObjectiveSpec(rkl, {}, FULL, True, "Full-vocabulary reverse KL(p || q)", "p = q"),
    "fkl": ObjectiveSpec(fkl, {}, FULL, True, "Full-vocabulary forward KL(q || p)", "p = q"),
    "jsd": ObjectiveSpec(jsd, {}, FULL, True,
        "Generalised JSD(beta), TRL convention (FKL at beta=0, RKL at beta=1, jumps there)", "p = q"),
    "jsd_norm": ObjectiveSpec(jsd_norm, {}, FULL, True,
        "JSD(beta)/(beta(1-beta)): continuous family with FKL (beta=0) and RKL (beta=1) as ends", "p = q"),
    "kl_mix": ObjectiveSpec(kl_mix, {}, FULL, True, "lam*FKL + (1-lam)*RKL (Decoupling)", "p = q"),
    "topk_rkl": _topk(topk_rkl, {}, True,
        "Top-K RKL; options k, support, norm, include_sampled (default: student top-20, stop-grad)",
        "depends on norm (see the four named variants)"),
    "topk_rkl_unnorm": _topk(topk_rkl, {"norm": "none"}, False,
        "Unnormalised top-K RKL: biased '+1' gradient drains mass from K (Many Faces' collapse)",
        "p = q/e on K (P_K -> Q_K/e); with student top-K the leak never stops"),
    "topk_rkl_sg": _topk(topk_rkl, {"norm": "stopgrad"}, True,
        "Stop-gradient top-K RKL sum_K p sg(log p - log q): the '+1' removed (recommended)",
        "p = q on K"),
    "topk_rkl_renorm": _topk(topk_rkl, {"norm": "renorm"}, True,
        "Renormalised top-K RKL KL(p/P_K || q/Q_K) on K (Revisiting's local support matching)",
        "p/P_K = q/Q_K on K; P_K free"),
    "topk_rkl_tail": _topk(topk_rkl, {"norm": "tail"}, True,
        "Top-K RKL plus a tail bucket: exact KL of the (K+1)-outcome coarsening",
        "p = q on K and P_tail = Q_tail"),
    "topk_fkl_teacher": ObjectiveSpec(topk_fkl_teacher, {}, TOP_K, False,
        "Teacher top-K forward KL -sum_{K_T} q log p (verl forward_kl_topk)",
        "p = q/Q_K on K_T, 0 elsewhere (over-concentrates)", cross_tokenizer=True),
    "chunk_rkl": ObjectiveSpec(chunk_rkl, {}, TOP_K, True,
        "Sampled RKL over aligned chunks: every token of chunk c gets reward log Q(c) - log P(c) (cross-tokenizer "
        "baseline; with one tokenizer, sampled_rkl)", "p = q on every chunk's text", prefixes=RATIO,
        cross_tokenizer=True),
    "shared_topk": _topk(topk_rkl, {"support": "teacher", "norm": "tail"}, True,
        "Top-K RKL on the teacher's top-K with a tail bucket; cross-tokenizer: the top-K of tokens both "
        "vocabularies spell the same, at chunk starts, unmatched mass in the tail (GOLD/ULD-like)",
        "p = q on the shared top-K and P_tail = Q_tail"),
    "sft": ObjectiveSpec(sft, {}, NO_TEACHER, None, "NLL of given tokens (SFT on teacher traces)",
        "p = the data distribution"),
    "grpo": ObjectiveSpec(grpo, {}, NO_TEACHER, None,
        "GRPO policy gradient with group-relative advantages, PPO clip vs the sampler",
        "maximises expected verifiable reward", prefixes=STUDENT_ONLY),
}

OPTION_CHOICES = {"support": topk_lib.SUPPORTS, "norm": topk_lib.NORMS}


def make_objective(name: str, **options) -> Callable[[Tensor, ObjectiveInputs], ObjectiveOutput]:
    """The objective called `name` with `options` bound; rejects unknown names and bad values.

    The returned callable checks input shapes on every call, so a wrong teacher tensor is
    caught where it enters, with the argument named.
    """
    if name not in OBJECTIVES:
        close = difflib.get_close_matches(name, OBJECTIVES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown objective {name!r}.{hint} Known: {', '.join(OBJECTIVES)}")
    spec = OBJECTIVES[name]
    allowed = _option_names(spec)
    for key in options:
        if key not in allowed:
            raise ValueError(f"objective {name!r} has no option {key!r}; its options are {allowed}")
        if key in spec.options and options[key] != spec.options[key]:
            raise ValueError(f"objective {name!r} fixes {key}={spec.options[key]!r}; use 'topk_rkl' to vary it")
    bound = {**spec.options, **options}
    _validate_options(name, bound)
    fn = partial(spec.fn, **bound)

    def objective(logits: Tensor, inputs: ObjectiveInputs) -> ObjectiveOutput:
        inputs = inputs.resolved()            # a lazy teacher head (called directly, not via opdkit.objectives.logprobs)
        check_shapes(logits, inputs)
        k = bound.get("k")
        if k is not None and k > logits.shape[-1]:
            raise ValueError(f"k={k} is larger than the vocabulary ({logits.shape[-1]} tokens)")
        out = fn(logits, inputs)
        out.metrics.update(inputs.teacher.diagnostics)      # per-position values the teacher reports (alignment)
        return out

    objective.__name__ = name
    objective.options = bound  # type: ignore[attr-defined]
    return objective


def _option_names(spec: ObjectiveSpec) -> list[str]:
    """Every keyword the objective's function takes besides (logits, inputs), fixed ones included."""
    return [p for p in inspect.signature(spec.fn).parameters if p not in ("logits", "inputs")]


def accepted_options(name: str) -> set[str]:
    """The options `name` lets a caller set (its function's keywords minus those its name fixes)."""
    spec = OBJECTIVES[name]
    return set(_option_names(spec)) - set(spec.options)


def _validate_options(name: str, options: dict) -> None:
    for key in ("beta", "lam"):
        if key in options and not 0.0 <= float(options[key]) <= 1.0:
            raise ValueError(f"{name}: {key} must lie in [0, 1], got {options[key]}")
    for key in ("k", "diagnostic_k"):
        if key in options and (not isinstance(options[key], int) or options[key] < 1):
            raise ValueError(f"{name}: {key} must be a positive integer, got {options[key]!r}")
    if options.get("clip") is not None and not options["clip"] > 0:
        raise ValueError(f"{name}: clip must be positive or None, got {options['clip']}")
    for key, choices in OPTION_CHOICES.items():
        if key in options and options[key] not in choices:
            raise ValueError(f"{name}: {key} must be one of {choices}, got {options[key]!r}")


def cross_tokenizer_objectives() -> str:
    """The objectives a teacher with another tokenizer supports, for messages."""
    plain = sorted((n for n, s in OBJECTIVES.items() if s.cross_tokenizer and not s.support_decides),
                   key=lambda n: n != "chunk_rkl")          # the baseline first
    named = [n for n, s in OBJECTIVES.items() if s.support_decides and s.options.get("support") == "teacher"]
    return ", ".join(plain + named + ["topk_rkl* with support=teacher or intersection (no include_sampled)"])


def topk_teacher_objectives() -> str:
    """The objectives a top-k-only (served) teacher supports, for messages."""
    plain = [n for n, s in OBJECTIVES.items() if s.teacher == TOP_K and not s.support_decides]
    supports = " or ".join(s for s in topk_lib.SUPPORTS if s not in FULL_SUPPORTS)
    return ", ".join(plain + [f"topk_rkl* with support={supports}"])
