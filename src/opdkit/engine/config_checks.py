"""Cross-field checks of a loaded config, run by `opdkit.engine.config.load_config` before any model loads.

Each check names the keys involved and the fix: required keys per mode, ranges, the objective
and its options, whether the teacher can provide what the objective needs (a served teacher
has only its top-k), the prefix source (rollout.source) and several teachers (model.teachers), and the
guard's rules with their switch objectives.
"""
from __future__ import annotations

import difflib
import importlib.util
import math
from typing import TYPE_CHECKING

from opdkit.engine.guard import Guard
from opdkit.errors import ConfigError
from opdkit.models.multiteacher import PER_TEACHER, TeacherSettings, check_teachers
from opdkit.models.served import served_members
from opdkit.objectives import (
    FULL,
    OBJECTIVES,
    TOP_K,
    accepted_options,
    make_objective,
    needs_teacher,
    prefix_problem,
    teacher_mismatch,
    teacher_prefix_objectives,
)

if TYPE_CHECKING:
    from opdkit.engine.config import Config


def validate(cfg: Config, need_train: bool = True) -> None:
    """Cross-field checks, each naming the keys involved."""
    if not cfg.model.student:
        raise ConfigError("model.student is required (a local HF directory or a .gguf file)")
    if cfg.mode == "distill" and not (cfg.model.teacher or cfg.model.teachers):
        raise ConfigError("`distill` needs model.teacher; for a self-teacher with PI use `opdkit self-distill`")
    if cfg.mode == "self-distill" and not (cfg.data.pi or cfg.data.pi_field):
        raise ConfigError("`self-distill` needs privileged information: data.pi or a data.pi_field in the data")
    if cfg.mode == "grpo" and cfg.rollout.samples_per_prompt < 2:
        raise ConfigError("grpo needs rollout.samples_per_prompt >= 2 (group-relative advantages)")
    if need_train and not cfg.data.train:
        raise ConfigError("data.train is required (a JSONL file of prompts)")
    for key in ("optim.steps", "optim.prompts_per_step", "optim.micro_batch", "rollout.max_new_tokens",
                "run.save_every", "run.keep_checkpoints", "run.max_bad_steps", "data.max_prompt_tokens"):
        section, leaf = key.split(".")
        if getattr(getattr(cfg, section), leaf) < 1:
            raise ConfigError(f"{key} must be at least 1")
    validate_drop_layers(cfg.model.drop_layers, cfg.model.drop_layers_every)
    if cfg.optim.state == "8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("optim.state=8bit needs bitsandbytes (its CPU path was verified with 0.50.2): "
                          "`pip install bitsandbytes`, or set optim.state=fp32")
    if cfg.mode == "self-distill" and cfg.model.teacher_dtype and (cfg.teacher.self_weights != "frozen" or cfg.model.lora_r):
        raise ConfigError(f"model.teacher_dtype={cfg.model.teacher_dtype} with self-distill casts the frozen teacher's own "
                          f"copy; a live, EMA or LoRA self-teacher shares or tracks the student's weights: use "
                          f"teacher.self_weights=frozen without model.lora_r, or unset model.teacher_dtype")
    if cfg.rollout.sampler_dtype and cfg.rollout.engine != "hf":
        raise ConfigError("rollout.sampler_dtype applies to the HF sampler; vLLM keeps its own copy in its own dtype")
    if cfg.rollout.decode_batch and cfg.rollout.engine != "hf":
        raise ConfigError("rollout.decode_batch applies to the HF sampler; vLLM batches its own requests")
    for key in ("objective.chunk_rows", "run.mmap_threshold_kib", "rollout.decode_batch"):
        section, leaf = key.split(".")
        if getattr(getattr(cfg, section), leaf) < 0:
            raise ConfigError(f"{key} must be 0 (automatic) or positive")
    if not 0.0 < cfg.rollout.top_p <= 1.0:
        raise ConfigError(f"rollout.top_p must lie in (0, 1], got {cfg.rollout.top_p}")
    if not cfg.rollout.temperature > 0 or not math.isfinite(cfg.rollout.temperature):
        raise ConfigError("rollout.temperature must be positive (greedy decoding is for eval only)")
    if not cfg.optim.lr > 0 or not math.isfinite(cfg.optim.lr):
        raise ConfigError(f"optim.lr must be a positive finite number, got {cfg.optim.lr}; e.g. optim.lr=1e-5")
    validate_objective(cfg.objective_name, cfg.objective.options)
    problem = check_teachers(TeacherSettings.from_config(cfg), cfg.mode, cfg.rollout.source, bool(cfg.model.teacher),
                             cfg.teacher.url, bool(cfg.data.pi or cfg.data.pi_field))
    if problem:
        raise ConfigError(problem)
    served = served_members(cfg.model.teachers)
    provides = TOP_K if cfg.teacher.url or served else FULL
    problem = teacher_mismatch(cfg.objective_name, cfg.objective.options, provides)
    if problem:
        raise ConfigError(problem + (f" (model.teachers.{served[0]} is served: every routed row is then scored as "
                                     f"top-k)" if served else ""))
    validate_source(cfg)
    validate_guard(cfg, provides)


def validate_drop_layers(indices: list, every: int) -> None:
    """Integers >= 0, no repeats, not combined with drop_layers_every (the range is checked at load)."""
    if not indices:
        return
    if every > 1:
        raise ConfigError("model.drop_layers and model.drop_layers_every both build the student; set only one")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        raise ConfigError(f"model.drop_layers must list layer indices (integers >= 0), got {indices!r}")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"model.drop_layers lists a layer twice: {indices!r}")


def validate_objective(name: str, options: dict) -> None:
    """Unknown objectives and options are refused here, before any model loads."""
    key = "objective.options" if name in OBJECTIVES else "objective.name"
    try:
        make_objective(name, **options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key}: {e}") from None


def validate_source(cfg: Config) -> None:
    """rollout.source=teacher|mix: a mode, teacher and objective that can learn from teacher-written responses."""
    r = cfg.rollout
    if not 0.0 <= r.student_fraction <= 1.0:
        raise ConfigError(f"rollout.student_fraction must lie in [0, 1], got {r.student_fraction}")
    if r.source == "student":
        return
    where = f"rollout.source={r.source}"
    if cfg.mode not in ("distill", "self-distill"):
        fix = "teacher.sft_traces=teacher" if cfg.mode == "sft" else "rollout.source=student"
        raise ConfigError(f"{where} applies to distill and self-distill; for {cfg.mode} use {fix}")
    if cfg.teacher.url:
        raise ConfigError(f"{where} needs a local teacher to write responses (a served teacher only scores them); "
                          f"unset teacher.url or use rollout.source=student")
    name = cfg.objective_name
    problem = prefix_problem(name, cfg.objective.options) if name in OBJECTIVES else None
    if problem:
        raise ConfigError(f"{where}: {problem}. Objectives that learn from teacher-sampled responses: "
                          f"{teacher_prefix_objectives()}")


def validate_guard(cfg: Config, provides: str) -> None:
    """Guard rules as they will run, and each rule's switch_objective, checked before anything loads.

    Unknown rules, rule keys and rules without bounds are refused. A rule the user wrote must
    switch to an objective that exists, takes the configured options it keeps, needs a teacher
    exactly when the run's objective does, and works with the teacher (a served teacher has
    only its top-k). Default rules are checked by name (their remedy, topk_rkl_tail, fires
    only for top-K objectives).
    """
    g = cfg.guard
    try:
        guard = Guard.from_config(g.rules, g.baseline_steps, g.use_defaults, g.disable)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"guard: {e}") from None
    if not g.enabled:
        return
    written = {spec.get("name") for spec in g.rules if isinstance(spec, dict)}
    for rule in guard.rules:
        if rule.teacher:
            evaluates = bool(cfg.run.eval_every and cfg.data.eval) and rule.teacher not in served_members(cfg.model.teachers)
            validate_teacher_rule(rule, list(cfg.model.teachers), cfg.teacher.combine, evaluates)
        elif rule.name in written and rule.metric.startswith("eval/") and not (cfg.run.eval_every and cfg.data.eval):
            # a default eval/ rule just stays idle without evaluation; a rule the user wrote would never fire
            raise ConfigError(f"guard rule {rule.name!r} watches {rule.metric!r}, logged only by in-run evaluation: "
                              f"set data.eval and run.eval_every, or watch a diag/ metric")
        target = rule.switch_objective
        if not target:
            continue
        where = f"guard rule {rule.name!r}: switch_objective {target!r}"
        if target not in OBJECTIVES:
            close = difflib.get_close_matches(target, OBJECTIVES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where} is not an objective.{hint} `opdkit objectives` lists them")
        if rule.name not in written:
            continue
        if needs_teacher(target) != needs_teacher(cfg.objective_name):
            raise ConfigError(f"{where}: a rule can switch only between objectives that use the same teacher; "
                              f"the run's {cfg.objective_name!r} and {target!r} differ")
        options = {k: v for k, v in cfg.objective.options.items() if k in accepted_options(target)}
        try:
            make_objective(target, **options)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        problem = teacher_mismatch(target, options, provides)
        if problem is None and cfg.rollout.source != "student":
            problem = prefix_problem(target, options)
        if problem:
            raise ConfigError(f"{where}: {problem}")


def validate_teacher_rule(rule, teachers: list[str], combine: str, evaluates: bool) -> None:
    """A guard rule scoped to one of several teachers (`teacher: NAME`) names a configured teacher and
    watches a metric that teacher has (routed: diag/X over its rows, or eval/teacher_kl; a mixture: only
    eval/teacher_kl, its per-token metrics are the mixture's), logged in this run."""
    where = f"guard rule {rule.name!r}: teacher {rule.teacher!r}"
    if not teachers:
        raise ConfigError(f"{where} needs several teachers (model.teachers); with one teacher leave `teacher` out")
    if rule.teacher not in teachers:
        raise ConfigError(f"{where} is not in model.teachers ({', '.join(teachers)})")
    known = teacher_metrics(rule.teacher, combine)
    if rule.watched not in known:
        raise ConfigError(f"{where} watches {rule.watched!r} (from metric {rule.metric!r}), which teacher.combine="
                          f"{combine} does not log per teacher; its metrics: {', '.join(known)}")
    if rule.watched.startswith("eval/") and not evaluates:
        raise ConfigError(f"{where} watches {rule.watched!r}, logged only by in-run evaluation (data.eval and "
                          f"run.eval_every) of a local teacher: set both, or watch a diag/ metric")


def teacher_metrics(name: str, combine: str) -> list[str]:
    """What a guard rule scoped to teacher `name` can watch: for routed teachers the token means over its
    own rows (`per_teacher_sums`) and its share of the step's tokens; in both modes eval/teacher_kl/<name>."""
    own = [f"diag/teacher/{name}/{key}" for key in (*PER_TEACHER, "share")] if combine == "route" else []
    return own + [f"eval/teacher_kl/{name}"]
