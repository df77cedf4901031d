"""Typed run configuration: dataclasses with field docs, YAML files and `key=value` overrides.

    cfg = load_config("distill", "run.yaml", ["optim.lr=1e-5", "rollout.top_p=0.9"])

Every field has a default and a one-line doc (the `doc` metadata), printed by
`opdkit config --help-fields`. Unknown keys are refused with the closest valid key. The
resolved config is written to the run directory as `config.yaml`, and `--resume` checks it
against the one the run started with. Functions elsewhere take values, not this object.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import yaml

from opdkit.engine.config_checks import validate
from opdkit.engine.prefix import SOURCES
from opdkit.errors import ConfigError
from opdkit.models.checkpoint import atomic_write_text
from opdkit.models.multiteacher import COMBINES

MODES = ("sft", "distill", "self-distill", "grpo")
# Top-K RKL with a tail bucket: sound (p = q on K and on the tail), works with served
# (top-k only) teachers, and on the tiny testbed it converged from students that the
# stop-grad student-top-K objective drove to high entropy (RESULTS.md, "testbed").
DEFAULT_OBJECTIVE = {"sft": "sft", "distill": "topk_rkl_tail", "self-distill": "topk_rkl_tail", "grpo": "grpo"}


def doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A dataclass field with a docstring (shown by `opdkit config`)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class ModelConfig:
    student: str = doc("student: a local HF model directory or a .gguf file", "")
    teacher: str = doc("teacher for `distill` (same forms as student); empty for self-distill", "")
    drop_layers_every: int = doc("build the student by keeping every n-th decoder layer of `student` (0: keep all)", 0)
    drop_layers: list = doc("build the student by removing these decoder layers of `student` (0-based indices, "
                            "e.g. [12, 13, 14, 15]; [] keeps all)", factory=list)
    dtype: str = doc("float32 | bfloat16 | float16 for both models", "float32")
    teacher_dtype: str = doc("the teacher's dtype when it differs from `dtype` ('' = same), e.g. bfloat16 to halve "
                             "its memory; the objective still works in fp32 on its log-probs", "")
    lora_r: int = doc("LoRA rank through peft (0: train all weights)", 0)
    lora_alpha: int = doc("LoRA alpha", 16)
    lora_targets: list = doc("module names LoRA adapts", factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    teachers: dict = doc("several teachers for `distill`: name -> local HF directory / .gguf, or 'self' (the student "
                         "shown PI, teacher.self_weights); routed or mixed by teacher.combine (opdkit.models.multiteacher)",
                         factory=dict)
    teacher_template: str = doc("whose chat template renders the teacher's prompt when templates differ: "
                                "'' (refuse; a teacher with another tokenizer: its own), 'student', 'teacher' or "
                                "'plain' (the messages as plain text, for a base-model teacher)", "")


@dataclass
class DataConfig:
    train: str = doc("training prompts, JSONL (one object per line)", "")
    eval: str = doc("held-out prompts for `opdkit eval` and in-run evaluation, JSONL", "")
    prompt_field: str = doc("key of the prompt text", "prompt")
    pi_field: str = doc("key of per-example privileged information (OPSD); absent keys mean none", "pi")
    answer_field: str = doc("key of the gold answer (GRPO rewards, eval accuracy)", "answer")
    response_field: str = doc("key of a given response (SFT on given traces)", "response")
    pi: str = doc("fixed privileged information shown to the teacher only (a system prompt or rule)", "")
    pi_placement: str = doc("where PI goes: 'system' (a system message), 'user' (before the prompt) or 'user_end' (after it)", "system")
    system_prompt: str = doc("a system prompt both student and teacher see", "")
    max_prompt_tokens: int = doc("prompt token limit (after the chat template)", 512)
    overlong: str = doc("prompts over the limit: 'skip' (counted in the log) or 'truncate' (keep the end)", "skip")


@dataclass
class RolloutConfig:
    max_new_tokens: int = doc("tokens sampled per response", 64)
    temperature: float = doc("sampling temperature", 1.0)
    top_p: float = doc("nucleus sampling; the sampler's own log-probs are kept for the importance ratio", 1.0)
    samples_per_prompt: int = doc("responses per prompt (GRPO's group size G)", 1)
    sampler_dtype: str = doc("'' samples from the student itself; 'bfloat16' from a bf16 copy synced every step "
                             "(half the bytes per decode step; the copy's log-probs are the behaviour policy)", "")
    engine: str = doc("sampler: 'hf' (transformers generate) or 'vllm' (colocated vllm.LLM, needs vllm and a GPU)", "hf")
    vllm_memory: float = doc("rollout.engine=vllm: fraction of GPU memory vLLM may take (weights + KV cache)", 0.3)
    record_topk: int = doc("also record the sampler's top-k ids and log-probs (0: off)", 0)
    decode_batch: int = doc("rows per generate call, each row sampled from its own generator seeded by (step salt, "
                            "row index), rows sorted by prompt length: more sequences per decode step than "
                            "optim.micro_batch (0: one call per micro-batch, seeded per micro-batch)", 0)
    source: str = doc("who samples the responses (the prefixes): 'student' (on-policy), 'teacher' (the teacher "
                      "writes from its own prompt at this temperature and top_p) or 'mix' (opdkit.engine.prefix)", "student")
    student_fraction: float = doc("rollout.source=mix: probability that a response is student-sampled (GKD's "
                                  "lmbda), drawn per response, seeded; logged as rollout/student_fraction", 0.5)


@dataclass
class ObjectiveConfig:
    name: str = doc("objective from `opdkit objectives` ('' = the mode's default)", "")
    options: dict = doc("objective options, e.g. {k: 20, support: student}", factory=dict)
    chunked: bool = doc("compute the loss in row chunks from hidden states (no (N,T,V) logits)", True)
    chunk_rows: int = doc("rows per chunk of the chunked objective (0: rows giving a ~64 MiB fp32 (rows, V) buffer)", 0)
    mask_special: bool = doc("mask the first occurrence of special tokens that differ between teacher and student", True)


@dataclass
class TeacherConfig:
    self_weights: str = doc("self-distill teacher weights: 'frozen' (initial), 'live' or 'ema'", "frozen")
    ema_decay: float = doc("EMA decay for self_weights=ema", 0.99)
    temperature: float = doc("teacher temperature when scoring", 1.0)
    url: str = doc("a served teacher: base URL of a vLLM OpenAI-compatible server (http://host:8000/v1) that serves "
                   "model.teacher; scored through prompt logprobs, top-k only (opdkit.models.served)", "")
    top_k: int = doc("top-k log-probs asked from a served teacher (vLLM caps it at the server's --max-logprobs)", 20)
    combine: str = doc("model.teachers: 'route' (each example's teacher.route_field names its teacher) or 'mixture' "
                       "(every token: the renormalised weighted geometric mean of the teachers)", "route")
    route_field: str = doc("model.teachers with combine=route: the data key naming each example's teacher", "teacher")
    weights: dict = doc("model.teachers with combine=mixture: name -> weight (>= 0, summing to > 0; missing: 1)",
                        factory=dict)
    sft_traces: str = doc("SFT targets: 'data' (the response field) or 'teacher' (greedy teacher answers)", "data")


@dataclass
class RewardConfig:
    kind: str = doc("GRPO reward: 'numeric' (last number equals the answer), 'exact' (stripped match) or 'contains'", "numeric")


@dataclass
class OptimConfig:
    steps: int = doc("optimizer steps", 100)
    prompts_per_step: int = doc("prompts per optimizer step (x samples_per_prompt responses)", 8)
    micro_batch: int = doc("responses per forward/backward; the loss is a token mean over the whole step", 8)
    lr: float = doc("peak learning rate (AdamW)", 1e-5)
    weight_decay: float = doc("AdamW weight decay", 0.0)
    betas: list = doc("AdamW betas", factory=lambda: [0.9, 0.999])
    warmup_steps: int = doc("linear warm-up steps", 0)
    schedule: str = doc("after warm-up: 'constant', 'linear' or 'cosine' decay to 0", "constant")
    max_grad_norm: float = doc("gradient clipping by global norm (0: off)", 1.0)
    state: str = doc("AdamW moments: 'fp32' (torch, fused) or '8bit' (bitsandbytes AdamW8bit: 2 instead of 8 bytes "
                     "per parameter; `pip install bitsandbytes`)", "fp32")


@dataclass
class RunConfig:
    out: str = doc("run directory: config, metrics.jsonl, events.jsonl, checkpoints/", "runs/run")
    seed: int = doc("seed for data order, sampling and initialisation", 0)
    save_every: int = doc("checkpoint every n steps (and at the end)", 50)
    keep_checkpoints: int = doc("completed checkpoints kept on disk", 2)
    max_bad_steps: int = doc("stop after this many non-finite steps in a row (each is skipped)", 3)
    max_weight_growth: float = doc("stop, unsaved, when one step makes the weights non-finite or multiplies their "
                                   "L2 norm by more than this (divergence; 0: only non-finite)", 2.0)
    eval_every: int = doc("evaluate on data.eval every n steps (0: off)", 0)
    eval_limit: int = doc("prompts used by in-run evaluation", 32)
    check: str = doc("rule check for eval: 'contains:TEXT', 'regex:PATTERN', 'spanish' ('' = none)", "")
    mmap_threshold_kib: int = doc("glibc: mmap allocations of at least this many KiB so freed chunk buffers go back "
                                  "to the OS (lower peak RSS with small objective.chunk_rows; 0: glibc's default)", 0)
    parallel: str = doc("under torchrun (WORLD_SIZE > 1): 'ddp' (replicated student) or 'fsdp' (FSDP2 fully_shard)", "ddp")
    threads: int = doc("torch CPU threads (0: leave torch's default)", 0)
    progress: bool = doc("console progress bar", True)
    trackers: list = doc("extra metric sinks when installed: 'tensorboard', 'wandb'", factory=list)
    profile: bool = doc("print a step-time breakdown at the end (`--profile`); on a GPU, synchronise at phase "
                        "boundaries so each phase is charged for its own kernels", False)
    diagnostics: bool = doc("per-step diagnostics (opdkit.engine.diagnostics); off only to measure their cost", True)
    sample_every: int = doc("write the step's decoded responses to samples.jsonl every n steps (0: never)", 10)
    hedge_words: list = doc("words counted by diag/hedge_rate (per 1,000 response words)",
                            factory=lambda: ["wait", "but", "maybe", "hmm", "alternatively"])


@dataclass
class GuardConfig:
    enabled: bool = doc("watch the step metrics with the guard's rules", True)
    use_defaults: bool = doc("start from the default rules (opdkit.engine.guard.DEFAULT_RULES)", True)
    disable: list = doc("names of default rules to drop", factory=list)
    rules: list = doc("extra rules (a rule with a default's name replaces it): {name, metric, above, below, "
                      "above_rel, below_rel, window, patience, action: warn|stop|rollback|drop_teacher, lr_factor, "
                      "switch_objective, why, teacher (model.teachers: watch and act on this one), drop_teacher "
                      "(rollback: also stop using `teacher`)}", factory=list)
    baseline_steps: int = doc("steps whose mean is each metric's baseline for relative bounds (an eval/ "
                              "metric's baseline is its step-0 evaluation)", 5)
    max_rollbacks: int = doc("rollbacks before the guard stops the run instead", 2)


@dataclass
class Config:
    mode: str = doc("sft | distill | self-distill | grpo (set by the command)", "distill")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    @property
    def objective_name(self) -> str:
        return self.objective.name or DEFAULT_OBJECTIVE[self.mode]


CHOICES = {
    "mode": MODES, "model.dtype": ("float32", "bfloat16", "float16"),
    "model.teacher_dtype": ("", "float32", "bfloat16", "float16"), "rollout.sampler_dtype": ("", "bfloat16", "float16"),
    "model.teacher_template": ("", "student", "teacher", "plain"), "data.pi_placement": ("system", "user", "user_end"),
    "data.overlong": ("skip", "truncate"), "teacher.self_weights": ("frozen", "live", "ema"),
    "teacher.sft_traces": ("data", "teacher"), "reward.kind": ("numeric", "exact", "contains"),
    "optim.schedule": ("constant", "linear", "cosine"), "optim.state": ("fp32", "8bit"), "run.parallel": ("ddp", "fsdp"),
    "rollout.engine": ("hf", "vllm"), "rollout.source": SOURCES, "teacher.combine": COMBINES,
}


def all_keys(cls=Config, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> field type, for every leaf field."""
    hints = get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(all_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = hints[f.name]
    return out


def field_docs(cls=Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, doc) for every leaf field, in declaration order."""
    hints, rows, default = get_type_hints(cls), [], cls()
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += field_docs(hints[f.name], f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, getattr(default, f.name), f.metadata.get("doc", "")))
    return rows


def _coerce(key: str, value: Any, kind: Any) -> Any:
    origin = get_origin(kind) or kind
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if origin in (int, float) and not isinstance(value, bool):
        try:
            number = float(value) if origin is float else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a {origin.__name__}, got {value!r}") from None
        if origin is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return number
    if origin is str:
        return "" if value is None else str(value)
    if origin in (list, dict) and isinstance(value, origin):
        return value
    raise ConfigError(f"{key} must be a {getattr(origin, '__name__', origin)}, got {value!r}")


def closest_key(key: str, keys: list[str]) -> str | None:
    """The valid key a user most likely meant: by its leaf name first, then by the whole key.

    A leaf spelled out where opdkit abbreviates (optim.learning_rate -> optim.lr) is matched
    by its initials; a misspelt leaf by similarity within its own section, then anywhere.
    """
    section, _, leaf = key.rpartition(".")
    initials = "".join(word[0] for word in leaf.split("_") if word)
    same_section = [k for k in keys if k.rpartition(".")[0] == section]
    for pool in (same_section, keys):
        by_leaf = {k.rpartition(".")[2]: k for k in pool}
        if len(initials) > 1 and initials in by_leaf:
            return by_leaf[initials]
        close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        if close:
            return by_leaf[close[0]]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    return close[0] if close else None


def read_yaml(path: Path) -> Any:
    """A YAML file's contents; a syntax error names the file, line and column."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: byte {e.object[e.start]:#04x} at offset {e.start} is not UTF-8; "
                          f"save the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{where}: YAML syntax error ({problem}); fix the file there "
                          f"(sections are `name:` with indented `key: value` lines)") from None


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key, refusing unknown keys (with the closest valid one) and bad values."""
    keys = all_keys()
    if key not in keys:
        close = closest_key(key, list(keys))
        hint = f" Did you mean {close!r}?" if close else ""
        raise ConfigError(f"unknown config key {key!r}.{hint} `opdkit config` lists every key.")
    value = _coerce(key, value, keys[key])
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key} must be one of {CHOICES[key]}, got {value!r}")
    *path, leaf = key.split(".")
    target = cfg
    for part in path:
        target = getattr(target, part)
    setattr(target, leaf, value)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        dotted = f"{prefix}{k}"
        # options/betas/lists are leaf values, not sections
        if isinstance(v, dict) and dotted not in all_keys():
            flat.update(_flatten(v, dotted + "."))
        else:
            flat[dotted] = v
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=1e-5' -> ('optim.lr', 1e-05); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=1e-5)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(mode: str, path: str | Path | None = None, overrides: list[str] = (), need_train: bool = True) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides; validated."""
    cfg = Config()
    set_key(cfg, "mode", mode)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        tree = read_yaml(path) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, ...) at the top")
        tree.pop("mode", None)  # the command decides the mode
        tree.pop(HISTORY, None)  # a run's config.yaml used as --config: its resume history is not a setting
        for key, value in _flatten(tree).items():
            set_key(cfg, key, value)
    for text in overrides:
        set_key(cfg, *parse_override(text))
    validate(cfg, need_train)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


HISTORY = "changes"    # config.yaml: the settings changed on --resume, oldest first ({step, key, old, new})


def save_config(cfg: Config, path: Path, history: list[dict] = ()) -> None:
    tree = to_dict(cfg)
    if history:
        tree[HISTORY] = list(history)
    atomic_write_text(path, yaml.safe_dump(tree, sort_keys=False))


def config_from_dict(tree: dict) -> Config:
    cfg = Config()
    mode = tree.get("mode", "distill")
    set_key(cfg, "mode", mode)
    for key, value in _flatten({k: v for k, v in tree.items() if k not in ("mode", HISTORY)}).items():
        set_key(cfg, key, value)
    return cfg
