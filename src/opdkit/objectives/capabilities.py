"""What each objective asks of its teacher and of its prefixes, derived from the `OBJECTIVES` table.

The session, the config checks, the served teacher's refusals and `opdkit objectives` ask here:
whether an objective needs a teacher, what the teacher must provide (FULL / TOP_K), why a teacher
or a prefix source (rollout.source) cannot serve it, and the table `opdkit objectives` prints.
"""
from __future__ import annotations

from opdkit.objectives.losses import (
    ANY_PREFIX,
    FULL,
    FULL_SUPPORTS,
    NO_TEACHER,
    OBJECTIVES,
    RATIO,
    STUDENT_ONLY,
    TOP_K,
    XTOK,
    cross_tokenizer_objectives,
    topk_teacher_objectives,
)


def needs_teacher(name: str) -> bool:
    return OBJECTIVES[name].teacher != NO_TEACHER


def teacher_needs(name: str, options: dict) -> str:
    """What objective `name` with `options` needs from its teacher: FULL, TOP_K or NO_TEACHER."""
    return OBJECTIVES[name].needs(options)


def teacher_mismatch(name: str, options: dict, provides: str) -> str | None:
    """Why a teacher that provides `provides` (FULL, TOP_K or XTOK) cannot serve objective `name`; None if it can."""
    if provides == XTOK:
        return cross_tokenizer_problem(name, options)
    if provides == FULL or teacher_needs(name, options) != FULL:
        return None
    spec = OBJECTIVES[name]
    support = {**spec.options, **options}.get("support", "student")
    what = f"support={support!r}" if spec.support_decides else "the full vocabulary"
    return (f"objective {name!r} needs the teacher's log-probabilities over {what}, but a served teacher returns only "
            f"its top-k; use one of {topk_teacher_objectives()}, or a local teacher")


def cross_tokenizer_problem(name: str, options: dict) -> str | None:
    """Why objective `name` cannot learn from a teacher with another tokenizer; None if it can.

    Such a teacher has no log-probs at the student's token ids: only per aligned chunk, and its
    top-k over the tokens both vocabularies spell the same, at chunk starts.
    """
    spec = OBJECTIVES[name]
    if spec.teacher == NO_TEACHER:
        return None
    bound = {**spec.options, **options}
    if spec.cross_tokenizer and teacher_needs(name, options) != FULL and not bound.get("include_sampled"):
        return None
    why = ("the teacher's log-probability of each student token" if name == "sampled_rkl"
           else "the teacher's scores at the student's own token ids")
    return (f"objective {name!r} needs {why}, but the teacher has another tokenizer (the vocabularies differ), so it "
            f"scores aligned chunks of text instead; objectives that work across tokenizers: "
            f"{cross_tokenizer_objectives()}")


def prefix_problem(name: str, options: dict) -> str | None:
    """Why objective `name` cannot learn from teacher-sampled responses (rollout.source=teacher|mix); None if it can.

    The sampler's recorded log mu(y_t) is the teacher's on its rows, so sampled_rkl's importance
    ratio p(y)/mu(y) makes y_t ~ teacher an unbiased estimate of the RKL gradient at that prefix;
    a PPO clip truncates the ratio to a trust region around 1, which a teacher's mu is not, so
    the clipped form is biased there. GRPO's advantages compare the student's own samples.
    """
    spec = OBJECTIVES[name]
    if spec.prefixes == STUDENT_ONLY:
        return f"objective {name!r} compares the student's own samples (group advantages)"
    clip = {**spec.options, **options}.get("clip")
    if spec.prefixes == RATIO and clip is not None:
        return (f"objective {name!r} with clip={clip} clips the importance ratio p/mu, and on teacher-"
                f"sampled rows mu is the teacher, far from the student: the clipped gradient is biased; drop the clip")
    return None


def teacher_prefix_objectives() -> str:
    """The objectives that learn from teacher-sampled prefixes, for messages."""
    names = [n for n, s in OBJECTIVES.items() if s.teacher != NO_TEACHER and s.prefixes == ANY_PREFIX]
    ratio = [f"{n} without clip" for n, s in OBJECTIVES.items() if s.prefixes == RATIO]
    return ", ".join(names + ratio + ["sft"])


def describe() -> str:
    """The table printed by `opdkit objectives`: name, teacher needs, soundness, fixed point."""
    lines = [f"teacher needs: {FULL} = log q at every token (a local teacher); {TOP_K} = its top-k and log q of the "
             f"sampled token (served teachers too); {NO_TEACHER} = no teacher",
             f"top-K RKL with support={' or '.join(FULL_SUPPORTS)} needs {FULL}",
             "prefixes (rollout.source): any = student, teacher or mix; ratio = student, or teacher/mix without "
             "clip (importance ratio vs the teacher's sampling log-probs); student = student only",
             "several teachers (model.teachers, local or self): full, so every objective, routed or as a geometric "
             "mixture; a served member ({url, model}) only routed, and then every row is top-k",
             f"teacher with another tokenizer ({XTOK}): log Q per aligned chunk and its top-k over shared tokens at "
             f"chunk starts: {cross_tokenizer_objectives()}; student prefixes only, alone (not in model.teachers)",
             ""]
    for name, s in OBJECTIVES.items():
        sound = {True: "sound", False: "BIASED", None: "no teacher"}[s.sound]
        needs = f"{TOP_K} or {FULL}" if s.support_decides and "support" not in s.options else s.teacher
        kinds = _teacher_kinds(name) if s.teacher != NO_TEACHER else "no teacher"
        lines.append(f"{name:<17} [{needs}; {sound}; prefixes: {s.prefixes}; teachers: {kinds}] {s.description}")
        lines.append(f"{'':<17} fixed point: {s.fixed_point}")
    return "\n".join(lines)


def _teacher_kinds(name: str) -> str:
    """Which teacher kinds serve `name` with its default options: same tokenizer, served top-k, cross-tokenizer."""
    kinds = [label for label, provides in (("same-tokenizer", FULL), ("served top-k", TOP_K),
                                           ("cross-tokenizer", XTOK))
             if teacher_mismatch(name, {}, provides) is None]
    spec = OBJECTIVES[name]
    if spec.support_decides and "support" not in spec.options:
        return ", ".join(kinds) + "; with support=teacher|intersection also served top-k, cross-tokenizer"
    return ", ".join(kinds)
