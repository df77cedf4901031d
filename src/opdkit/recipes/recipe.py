"""`opdkit recipe FILE.yaml [--resume]`: chain sft / grpo / distill / self-distill / eval stages.

    out: runs/my-recipe
    base: {model: {student: smollm2}, data: {train: t.jsonl, eval: e.jsonl}}   # shared settings
    stages:
      - {name: grpo, kind: grpo, config: {optim.steps: 20, rollout.samples_per_prompt: 4}}
      - {name: sft,  kind: sft,  teacher: grpo, config: {model.drop_layers_every: 2, teacher.sft_traces: teacher}}
      - {name: opd,  kind: distill, student: sft, teacher: grpo, until: {metric: eval/accuracy, at_least: 0.5}}
      - {name: eval, kind: eval, models: [smollm2, grpo, sft, opd]}

Each stage's config is `base`, then the stage's `config` (nested sections or dotted keys),
then its hand-offs: `student:` / `teacher:` name an earlier stage (its final weights,
exported to OUT/<stage>/model by `opdkit.engine.export`) or a model path. A student handed off by
a stage is already layer-dropped, so `model.drop_layers_every` and `model.drop_layers` are reset for it.
Training stages run through `opdkit.engine.runner.run` in OUT/<stage>/ (its own checkpoints and
metrics), ending at `optim.steps` or at the stage's `until` criterion (`opdkit.recipes.schedules`).
`eval` stages write OUT/<stage>/eval.json for each listed model.

OUT/recipe.json records the recipe and every finished stage, written atomically after
each stage; `--resume` skips finished stages and resumes the unfinished one from its own
newest checkpoint. `--only a,b` runs just those stages (one arm of a comparison as its own job, for
its own wall time and peak RSS); their hand-offs must be finished already or among them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from opdkit.engine.config import MODES, Config, _flatten, read_yaml, set_key, validate
from opdkit.engine.evaluate import eval_items, evaluate_session
from opdkit.engine.export import export_run
from opdkit.engine.metrics import read_metrics
from opdkit.engine.runner import run
from opdkit.engine.session import _require_fields, build_session, load_items
from opdkit.errors import ConfigError
from opdkit.models.checkpoint import atomic_write_text
from opdkit.models.teachers import PromptRenderer
from opdkit.recipes.schedules import Criterion, LengthCurriculum, StageControl, heldout_entropy, parse_criterion, parse_length

KINDS = MODES + ("eval",)
STAGE_KEYS = {"name", "kind", "student", "teacher", "config", "until", "schedule", "prompts", "models"}
STATE = "recipe.json"


@dataclass
class Stage:
    name: str
    kind: str
    config: dict                       # dotted key -> value (base + stage)
    student: str = ""                  # stage name or model path ('' = base/config value)
    teacher: str = ""
    criterion: Criterion | None = None
    length: LengthCurriculum | None = None
    prompts: str = "student"           # 'teacher': teacher-aligned prompts (the teacher's chat template)
    models: list = field(default_factory=list)


@dataclass
class Recipe:
    out: Path
    stages: list[Stage]
    source: dict                       # the parsed file, for the resume check

    def names(self) -> list[str]:
        return [s.name for s in self.stages]


# ----------------------------------------------------------------------------- parsing

def load_recipe(path: str | Path, out: str | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    tree = read_yaml(path) or {}
    if not isinstance(tree, dict) or not isinstance(tree.get("stages"), list) or not tree["stages"]:
        raise ConfigError(f"{path}: a recipe is a mapping with `stages:` (a non-empty list) and optional `out:`, `base:`")
    unknown = sorted(set(tree) - {"out", "base", "stages"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: out, base, stages")
    base = _flatten(tree.get("base") or {})
    stages = [parse_stage(f"{path}: stage {i + 1}", spec, base) for i, spec in enumerate(tree["stages"])]
    recipe = Recipe(Path(out or tree.get("out") or "runs/recipe"), stages, tree)
    check_references(recipe)
    for stage in recipe.stages:           # every stage's config must load now, not an hour into the run
        stage_config(recipe, stage)
    return recipe


def parse_stage(where: str, spec, base: dict) -> Stage:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a stage is a mapping with name and kind, got {spec!r}")
    unknown = sorted(set(spec) - STAGE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown stage key(s) {unknown}; allowed: {sorted(STAGE_KEYS)}")
    name, kind = str(spec.get("name") or ""), spec.get("kind")
    if not name or "/" in name:
        raise ConfigError(f"{where}: every stage needs a `name` (no '/'), used for its sub-directory and hand-offs")
    where = f"{where} ({name})"
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown stage kind {kind!r}; choose one of {list(KINDS)}")
    config = {**base, **_flatten(spec.get("config") or {})}
    until = spec.get("until") or {}
    if isinstance(until, dict) and "steps" in until:
        config["optim.steps"] = until["steps"]
    schedule = spec.get("schedule") or {}
    if not isinstance(schedule, dict) or set(schedule) - {"length"}:
        raise ConfigError(f"{where}: `schedule` takes only `length` (the entropy-gated length curriculum)")
    length = parse_length(where, schedule["length"]) if "length" in schedule else None
    if length is not None:
        config["rollout.max_new_tokens"] = length.start
    prompts = spec.get("prompts", "student")
    if prompts not in ("student", "teacher"):
        raise ConfigError(f"{where}: prompts must be 'student' or 'teacher' (teacher-aligned), got {prompts!r}")
    models = spec.get("models") or []
    if kind == "eval" and (not isinstance(models, list) or not models):
        raise ConfigError(f"{where}: an eval stage needs `models:`, a list of stage names or model paths")
    if kind != "eval" and models:
        raise ConfigError(f"{where}: `models` belongs to eval stages; use student/teacher for {kind}")
    return Stage(name, kind, config, str(spec.get("student") or ""), str(spec.get("teacher") or ""),
                 parse_criterion(where, spec.get("until")), length, prompts, [str(m) for m in models])


def references(stage: Stage) -> list[tuple[str, str]]:
    """(role, value) of every model the stage names."""
    refs = [("student", stage.student), ("teacher", stage.teacher)] + [("models", m) for m in stage.models]
    return [(role, value) for role, value in refs if value]


def check_references(recipe: Recipe) -> None:
    """Names unique; each reference is an earlier stage or an existing model; no cycles."""
    names = recipe.names()
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"recipe: stage names must be unique; repeated: {dupes}")
    graph = {s.name: [v for _, v in references(s) if v in names] for s in recipe.stages}
    cycle = find_cycle(graph)
    if cycle:
        raise ConfigError(f"recipe: hand-off cycle {' -> '.join(cycle)}; a stage can only use earlier stages' models")
    for i, stage in enumerate(recipe.stages):
        for role, value in references(stage):
            if value in names and names.index(value) >= i:
                raise ConfigError(f"recipe: stage {stage.name!r} uses {role} {value!r}, a later stage; "
                                  f"stages run in order, so move {value!r} before {stage.name!r}")
            if value not in names and not _model_exists(value):
                raise ConfigError(f"recipe: stage {stage.name!r}: {role} {value!r} is neither a stage "
                                  f"({', '.join(names)}) nor a model path")


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in the hand-off graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}            # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if state.get(nxt) is None and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in graph:
        if state.get(start) is None and (found := visit(start, [start])):
            return found
    return None


def _model_exists(value: str) -> bool:
    return value == "smollm2" or Path(value).expanduser().exists()


# ----------------------------------------------------------------------------- stage configs

def model_path(recipe: Recipe, ref: str) -> str:
    """A stage's exported model directory, or the path as given."""
    return str(recipe.out / ref / "model") if ref in recipe.names() else ref


def stage_config(recipe: Recipe, stage: Stage, model: str = "") -> Config:
    """base + stage config + hand-offs; for eval stages, the config that evaluates `model`."""
    cfg = Config()
    set_key(cfg, "mode", "sft" if stage.kind == "eval" else stage.kind)
    for key, value in stage.config.items():
        try:
            set_key(cfg, key, value)
        except ConfigError as e:
            raise ConfigError(f"recipe stage {stage.name!r}: {e}") from None
    student = model or stage.student
    if student:
        cfg.model.student = model_path(recipe, student)
        if student in recipe.names():
            cfg.model.drop_layers_every = 0      # a handed-off student already has its layers
            cfg.model.drop_layers = []
    if stage.teacher:
        cfg.model.teacher = model_path(recipe, stage.teacher)
    if stage.kind == "eval":
        cfg.model.teacher = ""
    if stage.prompts == "teacher" and not cfg.model.teacher_template:
        cfg.model.teacher_template = "teacher"
    cfg.run.out = str(recipe.out / stage.name)
    try:
        validate(cfg, need_train=stage.kind != "eval")
    except ConfigError as e:
        raise ConfigError(f"recipe stage {stage.name!r}: {e}") from None
    if stage.kind == "eval" and not cfg.data.eval:
        raise ConfigError(f"recipe stage {stage.name!r}: an eval stage needs data.eval")
    return cfg


# ----------------------------------------------------------------------------- state

def read_state(out: Path) -> dict | None:
    path = out / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def write_state(out: Path, state: dict) -> None:
    atomic_write_text(out / STATE, json.dumps(state, indent=2, default=str))


def start_state(recipe: Recipe, resume: bool) -> dict:
    state = read_state(recipe.out)
    if state is not None and not resume:
        raise ConfigError(f"{recipe.out} already holds a recipe run ({STATE}); pass --resume to continue it "
                          f"or set another `out`")
    if state is None:
        return {"recipe": recipe.source, "stages": {}}
    if state["recipe"] != json.loads(json.dumps(recipe.source, default=str)):
        raise ConfigError(f"--resume with a different recipe than the one {recipe.out / STATE} started with; "
                          f"restore the file or choose another `out`")
    return state


# ----------------------------------------------------------------------------- running

def run_recipe(recipe: Recipe, resume: bool = False, echo=print, only: list[str] | None = None) -> dict:
    """Run every unfinished stage in order (or only the stages named in `only`); returns the recipe state."""
    recipe.out.mkdir(parents=True, exist_ok=True)
    state = start_state(recipe, resume)
    selected = check_only(recipe, state, only)
    write_state(recipe.out, state)
    for stage in recipe.stages:
        if stage.name in state["stages"]:
            echo(f"[recipe] {stage.name}: done earlier, skipped")
            continue
        if stage.name not in selected:
            echo(f"[recipe] {stage.name}: not in --only, skipped")
            continue
        echo(f"[recipe] {stage.name} ({stage.kind}) -> {recipe.out / stage.name}")
        summary = run_eval_stage(recipe, stage) if stage.kind == "eval" else run_training_stage(recipe, stage)
        state["stages"][stage.name] = summary
        write_state(recipe.out, state)
        echo(f"[recipe] {stage.name}: {format_summary(summary)}")
    echo(format_table(state))
    return state


def check_only(recipe: Recipe, state: dict, only: list[str] | None) -> set[str]:
    """The stages to run: all, or `only`, each of whose stage hand-offs is finished or also selected."""
    names = recipe.names()
    if not only:
        return set(names)
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ConfigError(f"--only: no stage named {', '.join(map(repr, unknown))}; the recipe's stages: {', '.join(names)}")
    for stage in recipe.stages:
        missing = [v for _, v in references(stage) if stage.name in only and v in names
                   and v not in only and v not in state["stages"]]
        if missing:
            raise ConfigError(f"--only: stage {stage.name!r} hands off from {missing[0]!r}, which has not run; "
                              f"add it: --only {','.join([missing[0], *only])}")
    return set(only)


def run_training_stage(recipe: Recipe, stage: Stage) -> dict:
    cfg = stage_config(recipe, stage)
    stage_dir = Path(cfg.run.out)
    session = build_stage_session(cfg, stage)
    entropy = partial(stage_entropy, session) if stage.length is not None else None
    run(cfg, resume=stage_dir.exists(), session=session, control=StageControl(stage.criterion, stage.length, entropy))
    del session, entropy
    export_run(stage_dir, stage_dir / "model")
    return training_summary(stage_dir)


def stage_entropy(session, max_new_tokens: int) -> float:
    """The length gate's input: the student's entropy on its own samples for the held-out prompts."""
    return heldout_entropy(session, eval_items(session), max_new_tokens)


def build_stage_session(cfg: Config, stage: Stage):
    session = build_session(cfg)
    if stage.prompts == "teacher":
        align_prompts(session)
    return session


def align_prompts(s) -> None:
    """Teacher-aligned prompts: render the student's prompts with the teacher's chat template."""
    if s.teacher_tokenizer is None or s.teacher_tokenizer is s.tokenizer:
        raise ConfigError("prompts: teacher needs a separate teacher model (model.teacher) whose template to use")
    d = s.cfg.data
    s.student_prompt = PromptRenderer(s.teacher_tokenizer, d.system_prompt, placement=d.pi_placement)
    s.items, s.skipped_prompts = load_items(s.cfg, d.train, s.student_prompt, _require_fields(s.cfg))
    s._eval_items = None


def training_summary(stage_dir: Path) -> dict:
    """Steps run, why the stage ended, and the first and last held-out evaluation."""
    rows = read_metrics(stage_dir / "metrics.jsonl")
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    strip = lambda r: {k[5:]: v for k, v in r.items() if k.startswith("eval/")}
    events = [json.loads(line) for line in (stage_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    switch = [e for e in events if e.get("event") == "switch"]
    return {"steps": max((r["step"] for r in rows), default=0), "model": str(stage_dir / "model"),
            "ended": switch[-1].get("reason") if switch else "optim.steps",
            "before": strip(evals[0]) if evals and evals[0]["step"] == 0 else {},
            "after": strip(evals[-1]) if evals and evals[-1]["step"] > 0 else {}}


def run_eval_stage(recipe: Recipe, stage: Stage) -> dict:
    results = {}
    for ref in stage.models:
        s = build_session(stage_config(recipe, stage, ref), load_train=False)
        results[ref] = evaluate_session(s)
        del s
    out = recipe.out / stage.name
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps(results, indent=2))
    return {"eval": results}


def format_summary(summary: dict) -> str:
    show = lambda d: ", ".join(f"{k} {v:.3g}" for k, v in d.items() if k in ("accuracy", "length_mean", "hedge_rate"))
    if "eval" in summary:
        return "; ".join(f"{ref}: {show(r)}" for ref, r in summary["eval"].items())
    return (f"{summary['steps']} steps, ended by {summary['ended']}; before [{show(summary['before'])}] "
            f"after [{show(summary['after'])}]")


def format_table(state: dict) -> str:
    """A Markdown table of every finished stage: held-out accuracy, length, hedge rate before -> after."""
    def pair(summary: dict, key: str) -> str:
        before, after = summary.get("before", {}).get(key), summary.get("after", {}).get(key)
        show = lambda v: "-" if v is None else f"{v:.3g}"
        return f"{show(before)} -> {show(after)}"
    lines = ["| stage | steps | ended by | accuracy | length | hedge rate | teacher accuracy |", "|---|---|---|---|---|---|---|"]
    for name, summary in state["stages"].items():
        if "eval" in summary:
            for ref, r in summary["eval"].items():
                lines.append(f"| {name}: {ref} | - | - | {r.get('accuracy', '-')} | {r['length_mean']:.3g} | "
                             f"{r.get('hedge_rate', 0):.3g} | - |")
            continue
        teacher = summary.get("before", {}).get("teacher_accuracy")
        lines.append(f"| {name} | {summary['steps']} | {summary['ended']} | {pair(summary, 'accuracy')} | "
                     f"{pair(summary, 'length_mean')} | {pair(summary, 'hedge_rate')} | "
                     f"{'-' if teacher is None else f'{teacher:.3g}'} |")
    return "\n".join(lines)
