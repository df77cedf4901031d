"""Probes: before spending compute, measure whether a run can work, and say so.

- `probe_pair`: the preflight, the identity self-test, and on the student's own samples
  the top-K overlap with the teacher, the overlap mass, and the teacher's NLL of the
  student's tokens next to the student's own (Rethinking OPD's compatibility condition:
  the teacher must find the student's tokens plausible).
- `probe_prefix`: the teacher's accuracy on its own versus when it continues the student's
  prefixes cut at fractions of their length, and the teacher's probability of a hedge word
  right after the cut (Many Faces' prefix-conditioning probe: 62.1% -> 46.0%).
- `probe_pi`: for OPSD, how much the teacher's scores move when the privileged information
  is swapped with another example's, and the gap between each PI-conditioned teacher and the
  geometric-mean consensus over PIs, relative to the student's KL to the teacher (a shared
  rule has a small gap and can be internalised; instance-specific PI cannot).

With several teachers (`model.teachers`) `pair` adds each teacher's numbers on the rows it scores,
`prefix` probes each routed teacher on its own examples (a mixture writes nothing: refused), and
`pi` swaps the PI under the routed or mixed teacher.

Each returns a dict of numbers plus a `verdict` line. Thresholds are named constants below;
they are heuristics from the runs in RESULTS.md, not laws.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from opdkit.engine.diagnostics import HEDGE_WORDS, with_diagnostics
from opdkit.engine.evaluate import _generate, eval_items, identity_self_test, score_responses
from opdkit.engine.session import Session
from opdkit.errors import ConfigError, DataError
from opdkit.models.checkpoint import seeded
from opdkit.models.forward import model_head, pack
from opdkit.models.multiteacher import member_rollouts
from opdkit.objectives import make_objective
from opdkit.tasks.data import batches
from opdkit.tasks.rewards import make_reward

MAX_NLL_EXCESS = 2.0          # teacher NLL of student tokens this many nats above the student's own: incompatible
MAX_PAIR_KL = 2.0             # KL(student || teacher) per token above this: far apart
MIN_OVERLAP = 0.3             # top-K overlap ratio below this (with a large KL): disjoint supports
SHARED_PI_SHARE = 0.25        # consensus gap / student KL below this: a shared rule
SPECIFIC_PI_SHARE = 0.5       # above this: instance-specific PI


def score_rollouts(s: Session, rollouts, k: int = 20, teacher=None) -> dict[str, float]:
    """Token means of KL(p||q), overlap metrics and both NLLs of the sampled tokens (default teacher: the run's)."""
    objective = with_diagnostics(make_objective("rkl", diagnostic_k=min(k, s.vocab)))
    means, tokens = score_responses(s, teacher or s.teacher, rollouts, objective)
    return {"kl": means["loss"], "overlap": means.get("overlap", 0.0), "overlap_mass_p": means.get("overlap_mass_p", 0.0),
            "overlap_mass_q": means.get("overlap_mass_q", 0.0), "teacher_nll": -means["teacher_logprob"],
            "student_nll": -means["student_logprob"], "tokens": tokens}


def require_full_teacher(s: Session, probe: str) -> None:
    """The probes measure full-vocabulary KLs and let the teacher write: a served teacher can do neither."""
    if s.teacher is None or s.teacher.provides != "full":
        what = ("no teacher" if s.teacher is None else
                "a teacher with another tokenizer, scored per aligned chunk (`opdkit preflight` reports its alignment "
                "coverage, `opdkit eval` its NLL of the student's answers)" if s.teacher.provides == "cross-tokenizer"
                else "a served teacher, which returns only its top-k")
        raise ConfigError(f"probe {probe} needs a local teacher (full log-probs, and one that can write), and this "
                          f"config has {what}; probe a local copy of it (model.teacher=PATH without teacher.url, or a "
                          f"path in model.teachers)")


def probe_pair(s: Session, prompts: int = 16, seed: int = 0) -> dict:
    """With several teachers: the numbers for the routed / mixed teacher, then each teacher's own
    (`<name>/kl`, ..., `<name>/verdict`) on the rows it scores (its routed rows, or all in a mixture)."""
    require_full_teacher(s, "pair")
    items = (eval_items(s) if s.cfg.data.eval else s.items)[:prompts]
    with seeded(seed):
        rollouts = _generate(s, items, greedy=False)
    out = {"identity_kl": identity_self_test(s), "notes": list(s.report.notes), **score_rollouts(s, rollouts)}
    excess = out["teacher_nll"] - out["student_nll"]
    out["nll_excess"] = excess
    if out["identity_kl"] >= 1e-4:
        verdict = "BROKEN: the identity self-test failed; the scoring path is misaligned"
    else:
        verdict = pair_verdict(out["kl"], excess, out["overlap"])
    each = {}
    for name, (member, rows) in member_rollouts(s.teacher, rollouts).items():
        numbers = score_rollouts(s, rows, teacher=member)
        numbers["nll_excess"] = numbers["teacher_nll"] - numbers["student_nll"]
        out.update({f"{name}/{key}": value for key, value in numbers.items()})
        out[f"{name}/verdict"] = pair_verdict(numbers["kl"], numbers["nll_excess"], numbers["overlap"])
        each[name] = out[f"{name}/verdict"].split(":")[0]
    out["verdict"] = verdict + (f" (each teacher on its rows: {', '.join(f'{n} {v}' for n, v in each.items())})"
                                if each else "")
    return out


def pair_verdict(kl: float, nll_excess: float, overlap: float) -> str:
    """RISKY when the teacher finds the student's tokens implausible or the two are far apart.

    Overlap alone misleads at high entropy (two near-uniform distributions share few top-K
    ids yet have KL ~ 0), so it only counts together with a large KL.
    """
    numbers = f"KL {kl:.2f} nats/token, teacher NLL {nll_excess:+.2f} nats vs the student's own, top-K overlap {overlap:.2f}"
    if nll_excess > MAX_NLL_EXCESS or kl > MAX_PAIR_KL or (overlap < MIN_OVERLAP and kl > MAX_PAIR_KL / 2):
        return (f"RISKY: {numbers}. The teacher finds the student's tokens implausible; warm the student up with SFT "
                f"on teacher answers first (opdkit sft teacher.sft_traces=teacher)")
    return f"COMPATIBLE: {numbers}"


def hedge_token_ids(tokenizer, words=HEDGE_WORDS) -> list[int]:
    """First token of each hedge word, with and without a leading space and capitalised."""
    ids = set()
    for word in words:
        for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            tokens = tokenizer(form, add_special_tokens=False)["input_ids"]
            if tokens:
                ids.add(tokens[0])
    return sorted(ids)


@torch.no_grad()
def probe_prefix(s: Session, fractions=(0.25, 0.5, 0.75), prompts: int = 16, seed: int = 0) -> dict:
    """Teacher accuracy alone vs continuing the student's prefixes; hedge probability at the cut.

    Routed teachers: each continues the prefixes of its own examples (`<name>/...` keys); the
    unprefixed numbers pool them, weighted by examples. A mixture has no one writer: refused.
    """
    require_full_teacher(s, "prefix")
    items = [it for it in (eval_items(s) if s.cfg.data.eval else s.items) if it.example.answer is not None][:prompts]
    if not items:
        raise DataError("probe prefix needs examples with answers (data.answer_field)")
    if getattr(s.teacher, "combine", "route") != "route":
        raise ConfigError("probe prefix needs a teacher that writes answers, and teacher.combine=mixture has none (a "
                          "product of teachers is not sampled); probe each teacher alone (model.teacher=PATH) or "
                          "route them (teacher.combine=route)")
    with seeded(seed):
        student = _generate(s, items, greedy=False)
    groups = [(name, teacher, [items[j] for j in rows], [student.response_ids[j] for j in rows])
              for name, teacher, rows in _writers(s.teacher, items)]
    parts = {name: _prefix_numbers(s, teacher, mine, responses, fractions) for name, teacher, mine, responses in groups}
    if list(parts) == [""]:
        out = parts[""]
    else:
        weights = {name: len(mine) / len(items) for name, _, mine, _ in groups}
        out = {key: sum(weights[n] * parts[n][key] for n in parts) for key in next(iter(parts.values()))}
        out.update({f"{n}/{key}": value for n, numbers in parts.items() for key, value in numbers.items()})
    worst = min(out[f"teacher_after_{f:g}"] for f in fractions)
    drop = out["teacher_alone"] - worst
    out["verdict"] = (f"the teacher's accuracy falls from {out['teacher_alone']:.2f} alone to {worst:.2f} on student "
                      f"prefixes: " + ("it scores prefixes it would not write; expect revision tokens (mechanism 1)"
                                       if drop > 0.1 else "prefixes do not derail it"))
    return out


def _writers(teacher, items: list) -> list[tuple[str, object, list[int]]]:
    """(name, teacher, positions of the items it writes): one unnamed teacher, or each routed teacher."""
    members = getattr(teacher, "members", None)
    if members is None:
        return [("", teacher, list(range(len(items))))]
    rows = {name: [j for j, it in enumerate(items) if it.example.teacher == name] for name in members}
    return [(name, members[name], positions) for name, positions in rows.items() if positions]


def _prefix_numbers(s: Session, teacher, items: list, student_responses: list[list[int]], fractions) -> dict:
    """One teacher on its items: its accuracy alone, after each cut of the student's responses, and the
    probability of a hedge word right after the cut."""
    reward = make_reward(s.cfg.reward.kind)
    model, hedges = teacher.model(), torch.tensor(hedge_token_ids(s.tokenizer))
    prompts = [teacher.renderer(it.example) for it in items]
    with teacher.context():
        alone = _generate(s, items, True, model, prompts)
        out = {"teacher_alone": _accuracy(s, alone.response_ids, items, reward)}
        for f in fractions:
            cuts = [r[:int(len(r) * f)] for r in student_responses]
            continued = _generate(s, items, True, model, [p + c for p, c in zip(prompts, cuts)])
            full = [c + r for c, r in zip(cuts, continued.response_ids)]
            out[f"teacher_after_{f:g}"] = _accuracy(s, full, items, reward)
            out[f"hedge_prob_after_{f:g}"] = _hedge_probability(s, model, prompts, cuts, hedges)
    return out


def _accuracy(s: Session, responses: list[list[int]], items: list, reward) -> float:
    texts = s.tokenizer.batch_decode(responses, skip_special_tokens=True)
    return sum(reward(t, it.example.answer) for t, it in zip(texts, items)) / len(items)


def _hedge_probability(s: Session, model, prompts: list[list[int]], cuts: list[list[int]], hedges: torch.Tensor) -> float:
    """Mean teacher probability of any hedge token as the next token after each cut."""
    total = 0.0
    for rows in batches(list(range(len(prompts))), s.cfg.optim.micro_batch):
        packed = pack([prompts[i] + cuts[i] for i in rows], [[s.tokenizer.eos_token_id]] * len(rows),
                      s.tokenizer.pad_token_id)
        logq = model_head(model, packed, s.vocab).logprobs()[:, 0]
        total += float(logq[:, hedges].exp().sum(-1).sum())
    return total / len(prompts)


@torch.no_grad()
def probe_pi(s: Session, prompts: int = 16, others: int = 3, seed: int = 0) -> dict:
    """PI-swap sensitivity and the consensus gap, relative to the student's KL to its teacher."""
    require_full_teacher(s, "pi")
    items = s.items[:prompts]
    pis = [it.example.pi or s.cfg.data.pi for it in s.items]
    if not any(pis):
        raise DataError("probe pi needs privileged information: set data.pi or add a data.pi_field to the data")
    with seeded(seed):
        rollouts = _generate(s, items, greedy=False)
        order = torch.randperm(len(s.items)).tolist()
    swap_kl = gap = student_kl = tokens = 0.0
    for i, it in enumerate(items):
        response = rollouts.response_ids[i]
        if not response:
            continue
        own_pi = it.example.pi or s.cfg.data.pi
        alternatives = list(dict.fromkeys(pis[j] for j in order if pis[j] != own_pi))[:others] or [own_pi]
        variants = [it.example] + [dataclasses.replace(it.example, pi=p) for p in alternatives]
        logqs = torch.stack([_teacher_logprobs(s, e, response) for e in variants])      # (M, R, V)
        own = logqs[0]
        consensus = F.log_softmax(logqs.mean(0), -1)
        logp = _student_logprobs(s, it.prompt_ids, response)
        swap_kl += float(_kl(own, logqs[1:]).mean(0).sum())
        gap += float(_kl(own, consensus).sum())
        student_kl += float(_kl(logp, own).sum())
        tokens += len(response)
    out = {"swap_kl": swap_kl / tokens, "consensus_gap": gap / tokens, "student_kl": student_kl / tokens,
           "distinct_pis": len(set(pis))}
    out["instance_share"] = out["consensus_gap"] / max(out["student_kl"], 1e-8)
    out["verdict"] = pi_verdict(out["consensus_gap"], out["student_kl"])
    return out


def pi_verdict(consensus_gap: float, student_kl: float) -> str:
    """Shared rule vs instance-specific PI from the share of the teacher's signal the consensus misses."""
    share = consensus_gap / max(student_kl, 1e-8)
    if share < SHARED_PI_SHARE:
        kind = "SHARED: the PI acts like a common rule; OPSD can internalise it"
    elif share > SPECIFIC_PI_SHARE:
        kind = "INSTANCE-SPECIFIC: most of the teacher's signal depends on this example's PI; OPSD learns only the consensus"
    else:
        kind = "MIXED: part of the signal is shared, part instance-specific"
    return f"{kind} (consensus gap {consensus_gap:.3f} vs student KL {student_kl:.3f} nats/token)"


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis; broadcasts."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _teacher_logprobs(s: Session, example, response: list[int]) -> torch.Tensor:
    return s.teacher.score([example], [response]).resolved().logprobs[0]


def _student_logprobs(s: Session, prompt: list[int], response: list[int]) -> torch.Tensor:
    return model_head(s.student, pack([prompt], [response], s.tokenizer.pad_token_id), s.vocab).logprobs()[0]


PROBES = {"pair": probe_pair, "prefix": probe_prefix, "pi": probe_pi}


def format_probe(name: str, result: dict) -> str:
    lines = [f"probe {name}: {result['verdict']}"]
    for key, value in result.items():
        if key != "verdict":
            lines.append(f"  {key:<24} {value:.4g}" if isinstance(value, float) and math.isfinite(value)
                         else f"  {key:<24} {value}")
    return "\n".join(lines)


@torch.no_grad()
def consensus_kls(s: Session, items: list, pis: list[str], seed: int = 0) -> dict:
    """On the student's own samples for `items`: KL(student || own-PI teacher) and
    KL(student || geometric-mean consensus of the teacher over `pis`), token means.

    Mechanism 3's prediction for instance-specific PI: after OPSD the student sits closer to
    the consensus than to the teacher that saw the example's own PI.
    """
    with seeded(seed):
        rollouts = _generate(s, items, greedy=False)
    own = consensus = tokens = 0.0
    for it, response in zip(items, rollouts.response_ids):
        if not response:
            continue
        logqs = torch.stack([_teacher_logprobs(s, dataclasses.replace(it.example, pi=p), response) for p in pis])
        mean = F.log_softmax(logqs.mean(0), -1)
        logp = _student_logprobs(s, it.prompt_ids, response)
        own += float(_kl(logp, _teacher_logprobs(s, it.example, response)).sum())
        consensus += float(_kl(logp, mean).sum())
        tokens += len(response)
    return {"kl_to_own_teacher": own / max(tokens, 1.0), "kl_to_consensus": consensus / max(tokens, 1.0)}
