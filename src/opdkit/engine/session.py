"""Everything a run needs, built from a Config: models, tokenizer, teacher, data, objective.

`build_session` loads the student (optionally layer-dropped, optionally LoRA), the teacher
(a separate model for `distill`, the student shown PI for `self-distill`), runs the pair
preflight, renders and length-checks the prompts, and checks the objective. The training
loop (`opdkit.engine.runner`, `opdkit.engine.train`) and evaluation (`opdkit.engine.evaluate`) only consume this object.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opdkit.engine.config import Config
from opdkit.engine.precheck import check_before_loading, check_k_fits
from opdkit.errors import ConfigError, DataError
from opdkit.models.alignment import Aligner
from opdkit.models.crosstok import CrossTokenizerTeacher, cross_tokenizer_notes
from opdkit.models.forward import StudentForward
from opdkit.models.loading import DTYPES, PairReport, load_model, load_tokenizer, other_tokenizer, preflight
from opdkit.models.multiteacher import build_multi_teacher, check_routes
from opdkit.models.rollout import HFSampler, LowPrecisionCopy
from opdkit.models.served import ServedTeacher
from opdkit.models.teachers import ModelTeacher, PromptRenderer, SelfTeacher, Teacher
from opdkit.models.vllm_sampler import VLLMSampler, VLLMUnavailable
from opdkit.objectives import TOP_K, make_objective, needs_teacher, teacher_mismatch, teacher_needs
from opdkit.objectives.capabilities import cross_tokenizer_problem
from opdkit.scale.distributed import Dist
from opdkit.scale.memory import set_mmap_threshold
from opdkit.tasks.data import Example, PromptStream, fit_prompt, load_jsonl


@dataclass
class Item:
    """An example with its rendered student prompt."""

    example: Example
    prompt_ids: list[int]


@dataclass
class Session:
    cfg: Config
    tokenizer: object
    student: torch.nn.Module
    teacher: Teacher | None
    student_prompt: PromptRenderer
    sampler: HFSampler
    vocab: int
    items: list[Item]
    skipped_prompts: int
    report: PairReport
    teacher_tokenizer: object = None
    objective_name: str = ""          # the configured objective (the run's current one: RunState)
    rollout_copy: LowPrecisionCopy | None = None     # rollout.sampler_dtype
    dist: Dist = field(default_factory=Dist)        # this process's rank and world (opdkit.scale.distributed)
    student_forward: torch.nn.Module | None = None  # the student's training forward, DDP/FSDP-wrapped under torchrun

    def __post_init__(self):
        if self.student_forward is None:
            self.student_forward = StudentForward(self.student)

    def rollout_model(self) -> torch.nn.Module:
        """The model that samples training rollouts: the student, or its synced low-precision copy."""
        return self.student if self.rollout_copy is None else self.rollout_copy.synced(self.student)


def _lora(model, cfg: Config):
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=cfg.model.lora_r, lora_alpha=cfg.model.lora_alpha, target_modules=cfg.model.lora_targets,
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def prepare_items(examples: list[Example], render: PromptRenderer, limit: int, overlong: str) -> tuple[list[Item], int]:
    """Render prompts and apply the length limit; returns (items, number skipped)."""
    items, skipped = [], 0
    for example in examples:
        ids = fit_prompt(render(example), limit, overlong)
        if ids is None:
            skipped += 1
        else:
            items.append(Item(example, ids))
    return items, skipped


def _require_fields(cfg: Config) -> tuple[str, ...]:
    if cfg.mode == "grpo":
        return ("answer",)
    if cfg.mode == "sft" and cfg.teacher.sft_traces == "data":
        return ("response",)
    return ()


def load_items(cfg: Config, path: str, render: PromptRenderer, require: tuple[str, ...] = ()) -> tuple[list[Item], int]:
    d = cfg.data
    routed = bool(cfg.model.teachers) and cfg.teacher.combine == "route"
    examples = load_jsonl(path, d.prompt_field, d.pi_field, d.answer_field, d.response_field, require,
                          cfg.teacher.route_field if routed else "")
    if routed:
        check_routes(examples, list(cfg.model.teachers), path)
    items, skipped = prepare_items(examples, render, d.max_prompt_tokens, d.overlong)
    if not items:
        raise DataError(f"every prompt in {path} is longer than data.max_prompt_tokens={d.max_prompt_tokens}; "
                         f"raise the limit or set data.overlong=truncate")
    return items, skipped


def build_teacher(cfg: Config, student, tokenizer, report_vocab: int):
    """(teacher, teacher tokenizer, pair report) for the configured mode."""
    d = cfg.data
    if cfg.mode == "self-distill" or (cfg.mode == "sft" and cfg.teacher.sft_traces == "teacher" and not cfg.model.teacher):
        if not (d.pi or d.pi_field):
            raise ConfigError("a self-teacher needs privileged information: set data.pi")
        renderer = PromptRenderer(tokenizer, d.system_prompt, d.pi, d.pi_placement, with_pi=True)
        teacher = SelfTeacher(student, renderer, tokenizer.pad_token_id, report_vocab, cfg.teacher.self_weights,
                              cfg.teacher.ema_decay, cfg.teacher.temperature)
        _self_teacher_dtype(teacher, cfg.model.teacher_dtype)
        return teacher, tokenizer, PairReport(vocab=report_vocab)
    if cfg.model.teachers:
        teacher, report = build_multi_teacher(cfg, student, tokenizer, report_vocab)
        return teacher, tokenizer, report
    if not cfg.model.teacher:
        return None, None, PairReport(vocab=report_vocab)
    if cfg.teacher.url:        # the same tokenizer is assumed: ids go to the server as they are
        renderer = PromptRenderer(tokenizer, d.system_prompt, d.pi, d.pi_placement, with_pi=True)
        teacher = ServedTeacher(cfg.teacher.url, cfg.model.teacher, renderer, cfg.teacher.top_k, cfg.teacher.temperature)
        return teacher, tokenizer, PairReport(vocab=report_vocab)
    teacher_tok = load_tokenizer(cfg.model.teacher)
    if other_tokenizer(tokenizer, teacher_tok):
        return build_cross_teacher(cfg, tokenizer, teacher_tok, report_vocab)
    teacher_model = load_model(cfg.model.teacher, cfg.model.teacher_dtype or cfg.model.dtype)
    report = preflight(tokenizer, teacher_tok, student, teacher_model, cfg.model.teacher_template)
    report.raise_if_bad()
    template_tok = tokenizer if cfg.model.teacher_template == "student" else teacher_tok
    renderer = PromptRenderer(template_tok, d.system_prompt, d.pi, d.pi_placement, with_pi=True,
                              plain=cfg.model.teacher_template == "plain")
    teacher = ModelTeacher(teacher_model, renderer, tokenizer.pad_token_id, report.vocab, cfg.teacher.temperature)
    return teacher, teacher_tok, report


def _self_teacher_dtype(teacher: SelfTeacher, dtype: str) -> None:
    """Cast a frozen self-teacher's own copy to model.teacher_dtype: it never trains, so only scoring speed and
    precision change, as for a separate teacher (config_checks refuses a live, EMA or LoRA self-teacher)."""
    if dtype and teacher.copy is not None and teacher.weights == "frozen":
        teacher.copy.to(DTYPES[dtype])


def build_cross_teacher(cfg: Config, tokenizer, teacher_tok, vocab: int):
    """A teacher with another tokenizer: what it supports is checked before its weights load, and reported."""
    name, options, d = cfg.objective_name, cfg.objective.options, cfg.data
    problem = cross_tokenizer_problem(name, options)
    if problem:
        raise ConfigError(f"objective.name={name}: {problem}")
    if cfg.rollout.source != "student":
        raise ConfigError(f"rollout.source={cfg.rollout.source}: the teacher has another tokenizer, and teacher-written "
                          f"responses would need re-tokenising for the student (not implemented); use rollout.source=student")
    if cfg.model.teacher_template == "student":
        raise ConfigError("model.teacher_template=student: the teacher has another tokenizer, so it renders its prompt in "
                          "its own format ('' or 'teacher') or as plain text ('plain', for a base model)")
    plain = cfg.model.teacher_template == "plain"
    renderer = PromptRenderer(teacher_tok, d.system_prompt, d.pi, d.pi_placement, with_pi=True, plain=plain)
    k = 0 if teacher_needs(name, options) != TOP_K or name == "chunk_rkl" else int(options.get("k", 20))
    aligner = Aligner(tokenizer, teacher_tok)
    aligner.check()                  # no offsets and no faithful decode, or a lossy tokenizer: refused before loading
    model = load_model(cfg.model.teacher, cfg.model.teacher_dtype or cfg.model.dtype)
    teacher = CrossTokenizerTeacher(model, renderer, tokenizer, teacher_tok, k, cfg.teacher.temperature)
    report = PairReport(vocab=vocab, notes=cross_tokenizer_notes(teacher, tokenizer, teacher_tok, plain))
    return teacher, teacher_tok, report


def build_session(cfg: Config, load_train: bool = True) -> Session:
    check_before_loading(cfg)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    set_mmap_threshold(cfg.run.mmap_threshold_kib)
    torch.manual_seed(cfg.run.seed)
    tokenizer = load_tokenizer(cfg.model.student)
    student = load_model(cfg.model.student, cfg.model.dtype, cfg.model.drop_layers_every, cfg.model.drop_layers)
    if cfg.model.lora_r:
        student = _lora(student, cfg)
    d = cfg.data
    student_prompt = PromptRenderer(tokenizer, d.system_prompt, placement=d.pi_placement)
    teacher, teacher_tok, report = build_teacher(cfg, student, tokenizer, len(tokenizer))
    report.vocab = min(report.vocab, student.get_output_embeddings().weight.shape[0])
    check_k_fits(cfg.objective.options, report.vocab, "the pair's scored vocabulary")
    objective_name = cfg.objective_name
    make_objective(objective_name, **cfg.objective.options)      # bad options fail here, before any training
    if needs_teacher(objective_name) and teacher is None:
        raise ConfigError(f"objective {objective_name!r} needs a teacher: set model.teacher or use self-distill")
    problem = None if teacher is None else teacher_mismatch(objective_name, cfg.objective.options, teacher.provides)
    if problem:
        raise ConfigError(problem)
    items, skipped = load_items(cfg, d.train, student_prompt, _require_fields(cfg)) if load_train else ([], 0)
    if cfg.mode == "self-distill" and not d.pi and items and not any(it.example.pi for it in items):
        raise ConfigError(f"self-distill: no example in {d.train} has privileged information (field {d.pi_field!r}) and "
                         f"data.pi is empty, so the teacher would be the student; set data.pi or add the field")
    rollout_copy = LowPrecisionCopy(student, DTYPES[cfg.rollout.sampler_dtype]) if cfg.rollout.sampler_dtype else None
    return Session(cfg, tokenizer, student, teacher, student_prompt, make_sampler(cfg, tokenizer, student),
                   report.vocab, items, skipped, report, teacher_tok, objective_name, rollout_copy)


def make_sampler(cfg: Config, tokenizer, student):
    if cfg.rollout.engine == "hf":
        return HFSampler(tokenizer.eos_token_id, tokenizer.pad_token_id)
    try:
        return VLLMSampler.create(cfg.model.student, student, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                  "bfloat16" if cfg.model.dtype == "float32" else cfg.model.dtype,
                                  cfg.rollout.vllm_memory, seed=cfg.run.seed)
    except VLLMUnavailable as e:
        raise ConfigError(str(e)) from None


def new_stream(session: Session) -> PromptStream:
    return PromptStream(session.items, session.cfg.run.seed)
