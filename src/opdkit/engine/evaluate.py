"""Evaluation on held-out prompts: accuracy, length, rule following, KL to the teacher.

Greedy answers give accuracy (when the data has answers), mean length, EOS rate, hedge rate,
3-gram repeat ratio, the rule-following rate (`run.check`) and the teacher's token-mean NLL
of them (`teacher_nll`: how plausible the teacher finds what the student says). Responses
sampled at temperature 1 give the held-out reverse KL to the teacher, token-averaged (the
quantity OPD minimises, measured on the student's own distribution), and on the same tokens
the student's entropy and the mass P_K / Q_K that student and teacher put on the student's
top-20 (the unnormalised top-K objective drains P_K toward Q_K/e). Evaluation saves and restores the global RNG and seeds its own
sampling, so it neither perturbs a training run nor varies between evaluations.
"""
from __future__ import annotations

import torch

from opdkit.engine.diagnostics import hedge_rate, repeat_ratio, with_diagnostics
from opdkit.engine.prefix import teacher_rollouts
from opdkit.engine.session import Session, load_items
from opdkit.models.checkpoint import seeded
from opdkit.models.forward import model_head, pack
from opdkit.models.multiteacher import member_kls
from opdkit.models.rollout import Rollouts
from opdkit.models.teachers import PromptRenderer, SelfTeacher, Teacher
from opdkit.objectives import make_objective
from opdkit.objectives.logprobs import chunked_objective_loss
from opdkit.objectives.losses import XTOK
from opdkit.objectives.scores import ObjectiveInputs, upcast
from opdkit.objectives.topk import support_metrics
from opdkit.tasks.data import batches
from opdkit.tasks.rewards import make_check, make_reward


def eval_items(s: Session) -> list:
    if getattr(s, "_eval_items", None) is None:
        s._eval_items = load_items(s.cfg, s.cfg.data.eval, s.student_prompt)[0][: s.cfg.run.eval_limit]
    return s._eval_items


def _generate(s: Session, items: list, greedy: bool, model=None, prompts: list | None = None,
              max_new_tokens: int | None = None) -> Rollouts:
    """Responses of `model` (default: the student) to the items' prompts (default: the student's),
    at most `max_new_tokens` long (default: rollout.max_new_tokens; a run passes its current length)."""
    model = model or s.student
    prompts = prompts or [it.prompt_ids for it in items]
    max_new_tokens = max_new_tokens or s.cfg.rollout.max_new_tokens
    out = Rollouts.concat([s.sampler.sample(model, chunk, max_new_tokens=max_new_tokens,
                                            temperature=1.0, top_p=1.0, greedy=greedy)
                           for chunk in batches(prompts, s.cfg.optim.micro_batch)])
    out.meta = [it.example for it in items]
    return out


def answer_metrics(s: Session, rollouts: Rollouts, items: list) -> dict:
    """Length, EOS rate, accuracy (when every item has an answer) and rule rate (run.check)."""
    texts = s.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
    out = {"length_mean": sum(map(len, rollouts.response_ids)) / len(items),
           "eos_rate": sum(rollouts.finished) / len(items),
           "hedge_rate": hedge_rate(texts, tuple(s.cfg.run.hedge_words)),
           "repeat_ratio": repeat_ratio(rollouts.response_ids)}
    answers = [it.example.answer for it in items]
    if all(a is not None for a in answers):
        reward = make_reward(s.cfg.reward.kind)
        out["accuracy"] = sum(reward(t, a) for t, a in zip(texts, answers)) / len(items)
    if s.cfg.run.check:
        check = make_check(s.cfg.run.check)
        out["rule_rate"] = sum(map(check, texts)) / len(items)
    return out


@torch.no_grad()
def score_responses(s: Session, teacher: Teacher, rollouts: Rollouts, objective) -> tuple[dict[str, float], float]:
    """Token means of the objective's per-token loss (key "loss") and of each metric it reports,
    on the given responses scored by `teacher`; and the number of tokens."""
    sums, tokens = {}, 0.0
    size = s.cfg.optim.micro_batch
    for rows in [slice(i, i + size) for i in range(0, len(rollouts), size)]:
        responses = rollouts.response_ids[rows]
        packed = pack(rollouts.prompt_ids[rows], responses, s.tokenizer.pad_token_id)
        inputs = ObjectiveInputs(packed.response_ids, teacher.score(rollouts.meta[rows], responses))
        result = chunked_objective_loss(objective, model_head(s.student, packed, s.vocab), inputs, packed.response_mask)
        mask = packed.response_mask
        tokens += float(mask.sum())
        for key, value in {"loss": result.per_token, **result.metrics}.items():
            sums[key] = sums.get(key, 0.0) + float((value * mask).sum())
    return {key: value / max(tokens, 1.0) for key, value in sums.items()}, tokens


def teacher_kl(s: Session, teacher: Teacher, rollouts: Rollouts) -> float:
    """Token-mean full-vocabulary KL(student || teacher) on the given responses (0 without tokens)."""
    means, _ = score_responses(s, teacher, rollouts, make_objective("rkl"))
    return means.get("loss", 0.0)


def kl_with_support(k: int = 20):
    """Full RKL (loss) plus P_K, Q_K, P_K/Q_K on the student's top-k at each position (metrics).

    The teacher's log-probs are those its TeacherScores resolve to, one row chunk at a time."""
    kl = make_objective("rkl")

    def objective(logits, inputs):
        out = kl(logits, inputs)
        logp = upcast(logits).log_softmax(-1)
        top = logp.topk(min(k, logp.shape[-1]), dim=-1).indices                     # (N, k)
        log_pk = logp.gather(-1, top).logsumexp(-1)
        log_qk = upcast(inputs.teacher.logprobs).gather(-1, top).logsumexp(-1)
        out.metrics.update(support_metrics(log_pk, log_qk, torch.ones_like(top, dtype=torch.bool)))
        return out
    return objective


def sampled_metrics(s: Session, teacher: Teacher, rollouts: Rollouts) -> dict:
    """On temperature-1 samples: KL to the teacher, the student's entropy, P_K, Q_K, length, repeats."""
    means, _ = score_responses(s, teacher, rollouts, kl_with_support())
    n = max(1, len(rollouts))
    return {"teacher_kl": means.get("loss", 0.0), "sample_entropy": means.get("student_entropy", 0.0),
            **{key: means.get(key, 0.0) for key in ("p_k", "q_k", "pk_over_qk")},
            "sample_length_mean": sum(map(len, rollouts.response_ids)) / n,
            "sample_repeat_ratio": repeat_ratio(rollouts.response_ids)}


def teacher_nll(s: Session, teacher: Teacher, rollouts: Rollouts) -> float:
    """The teacher's token-mean negative log-likelihood of the given responses (0 without tokens).

    A teacher with another tokenizer scores the text: -log Q(text) summed over responses, divided
    by the student's token count (chunk_rkl's teacher_logprob spreads each chunk's log Q over it)."""
    return -cross_tokenizer_means(s, teacher, rollouts).get("teacher_logprob", 0.0) if teacher.provides == XTOK \
        else -score_responses(s, teacher, rollouts, with_diagnostics(make_objective("rkl")))[0].get("teacher_logprob", 0.0)


def cross_tokenizer_means(s: Session, teacher: Teacher, rollouts: Rollouts) -> dict[str, float]:
    """Token means of chunk_rkl's metrics (teacher_logprob, reward, align_single, align_shared) on the responses."""
    return score_responses(s, teacher, rollouts, make_objective("chunk_rkl"))[0]


def evaluate_session(s: Session, items: list | None = None, seed: int = 1234, teacher_side: bool = False,
                     max_new_tokens: int | None = None) -> dict:
    """Student metrics; with `teacher_side`, the same metrics for the teacher on its own (PI) prompts
    (the ceiling: a rule the PI-conditioned teacher does not follow cannot be internalised)."""
    items = eval_items(s) if items is None else items
    n = max_new_tokens
    with seeded(seed):
        greedy = _generate(s, items, greedy=True, max_new_tokens=n)
        out = answer_metrics(s, greedy, items)
        if s.teacher is not None and s.teacher.provides == XTOK:     # another tokenizer: the text's NLL, coverage
            means = cross_tokenizer_means(s, s.teacher, greedy)
            out.update({"teacher_nll": -means.get("teacher_logprob", 0.0), "chunk_reward": means.get("reward", 0.0),
                        "align_single": means.get("align_single", 0.0), "align_shared": means.get("align_shared", 0.0)})
        if s.teacher is not None and s.teacher.provides == "full":   # a served teacher: no full log-probs, no weights
            sampled = _generate(s, items, greedy=False, max_new_tokens=n)
            out.update(sampled_metrics(s, s.teacher, sampled))       # teacher_kl and the shape metrics
            out.update(member_kls(s.teacher, sampled, lambda member, rows: teacher_kl(s, member, rows)))
            out["teacher_nll"] = teacher_nll(s, s.teacher, greedy)
            if teacher_side and getattr(s.teacher, "combine", "route") == "route":    # a mixture has no one writer
                with torch.no_grad():
                    written = teacher_rollouts(s, items, s.cfg.optim.micro_batch, None, greedy=True,
                                               max_new_tokens=n or s.cfg.rollout.max_new_tokens, temperature=1.0,
                                               top_p=1.0)
                out.update({f"teacher_{k}": v for k, v in answer_metrics(s, written, items).items()})
        elif getattr(s.teacher, "members", None):          # routed with a served member: the local members' KL
            sampled = _generate(s, items, greedy=False, max_new_tokens=n)
            out.update(member_kls(s.teacher, sampled, lambda member, rows: teacher_kl(s, member, rows)))
        return out


def gap_recovery(before: dict, now: dict) -> dict:
    """(x_now - x_before) / (x_teacher - x_before) for accuracy and rule rate (MATH.md).

    `before` is the step-0 evaluation (it holds the teacher's own rates); 1 means the student
    closed the whole gap to its teacher; undefined (absent) when the teacher is no better.
    """
    out = {}
    for key in ("accuracy", "rule_rate"):
        if key in now and key in before and f"teacher_{key}" in before:
            gap = before[f"teacher_{key}"] - before[key]
            if gap > 0:
                out[f"{key}_gap_recovery"] = (now[key] - before[key]) / gap
    return out


def sample_answers(s: Session, n: int) -> list[tuple[str, str]]:
    """(prompt, greedy answer) for the first n eval prompts: what the numbers are counting."""
    items = eval_items(s)[:n]
    texts = s.tokenizer.batch_decode(_generate(s, items, greedy=True).response_ids, skip_special_tokens=True)
    return [(it.example.prompt, t) for it, t in zip(items, texts)]


@torch.no_grad()
def identity_self_test(s: Session, prompts: int = 2) -> float:
    """KL of the student to itself through the teacher path (same prompt, live weights): must be ~0.

    A non-zero value means the scoring path misaligns positions or renders prompts differently.
    """
    items = s.items[:prompts]
    with seeded(0):
        rollouts = _generate(s, items, greedy=False)
    same = SelfTeacher(s.student, PromptRenderer(s.student_prompt.tokenizer, s.student_prompt.system), s.tokenizer.pad_token_id,
                       s.vocab, weights="live")
    return teacher_kl(s, same, rollouts)
