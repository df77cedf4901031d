"""A CPU testbed in seconds: a tiny teacher that knows a task, and students near or at it.

Task: "what is a plus b?" for a, b in 0..4 (25 prompts; the answer is one digit, then EOS).
`build_testbed(dir)` trains a 2-layer Llama (hidden 64, the tiny BPE tokenizer) from
scratch by SFT through opdkit's own loop, keeping checkpoints along the way, and exports:

- `teacher/`: the final SFT model (greedy accuracy 1.0 on the task);
- `student_<step>/`: earlier SFT checkpoints (partially trained students), on request.

The guard test and the lab use it: a student equal to the teacher separates objectives
that stay at p = q (stop-grad, tail) from the unnormalised one that leaves it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from opdkit.engine.config import load_config
from opdkit.engine.export import export_run
from opdkit.engine.runner import run
from opdkit.lab.tiny import build_tokenizer, save_tiny


def write_task(path: Path, size: int = 5) -> Path:
    with open(path, "w") as fh:
        for a in range(size):
            for b in range(size):
                fh.write(json.dumps({"prompt": f"what is {a} plus {b}?", "answer": str(a + b),
                                     "response": str(a + b)}) + "\n")
    return path


def build_testbed(root: str | Path, sft_steps: int = 300, students: tuple[int, ...] = (), seed: int = 0) -> Path:
    """Train the teacher in `root/teacher_run` and export `root/teacher` (+ `root/student_<step>`)."""

    root = Path(root)
    marker = root / "testbed.json"
    spec = {"sft_steps": sft_steps, "students": sorted(students), "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root                      # cached: trained models are reused, not retrained
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "teacher_run", ignore_errors=True)     # a half-built or differently built testbed
    save_tiny(root / "init", layers=2, hidden=64, seed=seed, tokenizer=build_tokenizer())
    task = write_task(root / "task.jsonl")
    cfg = load_config("sft", overrides=[
        f"model.student={root / 'init'}", f"data.train={task}", f"run.out={root / 'teacher_run'}",
        f"optim.steps={sft_steps}", "optim.prompts_per_step=16", "optim.micro_batch=16", "optim.lr=3e-3",
        "rollout.max_new_tokens=4", "run.save_every=20", f"run.keep_checkpoints={sft_steps // 20 + 1}",
        "run.progress=false", "guard.enabled=false", f"run.seed={seed}", "run.threads=1"])
    run(cfg)
    export_run(root / "teacher_run", root / "teacher")
    for step in students:
        export_run(root / "teacher_run", root / f"student_{step}", root / "teacher_run" / "checkpoints" / f"step_{step:08d}")
    marker.write_text(json.dumps(spec))
    return root


HELDOUT = 5        # prompts of the 25 held out of OPD (the teacher and the SFT students saw them)


def split_task(root: Path, seed: int, name: str = "task") -> tuple[Path, Path]:
    """<name>_train.jsonl (20 of the 25 prompts: what OPD trains on) and <name>_heldout.jsonl (5: what
    is evaluated); the same prompts are held out for every file of one seed."""
    import random
    train, heldout = root / f"{name}_train.jsonl", root / f"{name}_heldout.jsonl"
    if not (train.is_file() and heldout.is_file()):
        rows = (root / f"{name}.jsonl").read_text().splitlines(keepends=True)
        held = set(random.Random(500 + seed).sample(range(len(rows)), HELDOUT))
        train.write_text("".join(r for i, r in enumerate(rows) if i not in held))
        heldout.write_text("".join(r for i, r in enumerate(rows) if i in held))
    return train, heldout


def flat_student(root: Path, name: str, scale: float) -> Path:
    """`root/<name>_flat`: the student `name` with its output layer scaled by `scale` (< 1: a flatter
    distribution with the same ranking, so less mass P_K on its top-K)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = root / f"{name}_flat"
    if not (out / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(root / name)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(scale)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(root / name).save_pretrained(out)
    return out


def opd_overrides(root: Path, student: str, out: Path, objective: str, k: int = 5, lr: float = 3e-4,
                  steps: int = 80, teacher: str = "teacher", max_new_tokens: int = 4) -> list[str]:
    """A distill run on the testbed: 32 sampled answers per step, top-K with K = k."""
    return [f"model.student={root / student}", f"model.teacher={root / teacher}", f"data.train={root / 'task.jsonl'}",
            f"run.out={out}", f"optim.steps={steps}", "optim.prompts_per_step=32", "optim.micro_batch=32",
            f"optim.lr={lr}", f"rollout.max_new_tokens={max_new_tokens}", f"objective.name={objective}",
            f"objective.options={{k: {k}}}",
            "run.save_every=5", "run.keep_checkpoints=30", "run.progress=false", "run.threads=1"]


# ----------------------------------------------------------------------------- privileged information

RULE = "always shout."          # the shared rule: answers end with "!"
PARTIAL_C12 = (0.6, 0.15)       # C12's "!" shares of SFT answers with and without the rule: a partial teacher
PARTIAL_C11 = (1.0, 0.15)       # C11's: a full teacher, and a student that finds "!" by sampling
KEY_ITEMS, KEY_TRAIN = 30, 20   # items 0-19 train OPSD, 20-29 are held out


def item_keys(seed: int) -> dict[int, int]:
    import random
    rng = random.Random(1000 + seed)
    return {n: rng.randint(0, 9) for n in range(KEY_ITEMS)}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_pi_testbed(root: str | Path, sft_steps: int = 600, seed: int = 0,
                     partial: tuple[float, float] | None = None) -> Path:
    """A teacher that follows a rule when told (`RULE` -> answer + "!") and copies a key from its PI.

    SFT data: every sum with and without the rule in front of the question; for every item,
    three questions "what is the key of item n?" preceded by "the key is k." with random k,
    so the only way to answer is to copy from the PI. Also writes the OPSD datasets:
    sums.jsonl (no rule), keys_train.jsonl / keys_heldout.jsonl (the true key as `pi`).

    `partial` = (with, without): the shares of SFT answers ending in "!" with and without the rule
    (C11, C12): a teacher that follows the rule only partly, a student that sometimes says "!"
    unprompted (so sampling finds the rule and GRPO has a reward from the start); no key items.
    """
    import random

    root = Path(root)
    marker = root / "pi_testbed.json"
    spec = {"sft_steps": sft_steps, "seed": seed, "version": 2, **({"partial": list(partial)} if partial else {})}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "teacher_run", ignore_errors=True)
    save_tiny(root / "init", layers=2, hidden=64, seed=seed, tokenizer=build_tokenizer())
    rng = random.Random(seed)
    sums = [(f"what is {a} plus {b}?", str(a + b)) for a in range(5) for b in range(5)]
    if partial:       # 20 copies of each prompt, the share of "!" answers as configured
        with_rule, without = partial
        rows = [{"prompt": q, "response": ans + ("!" if i < round(20 * without) else "")}
                for q, ans in sums for i in range(20)]
        rows += [{"prompt": f"{RULE}\n\n{q}", "response": ans + ("!" if i < round(20 * with_rule) else "")}
                 for q, ans in sums for i in range(20)]
    else:
        rows = [{"prompt": q, "response": ans} for q, ans in sums]
        rows += [{"prompt": f"{RULE}\n\n{q}", "response": ans + "!"} for q, ans in sums]
        rows += [{"prompt": f"the key is {k}.\n\nwhat is the key of item {n}?", "response": str(k)}
                 for n in range(KEY_ITEMS) for k in rng.sample(range(10), 3)]
    _jsonl(root / "sft.jsonl", rows)
    keys = item_keys(seed)
    _jsonl(root / "sums.jsonl", [{"prompt": q, "answer": ans} for q, ans in sums])
    _jsonl(root / "sums_rule.jsonl", [{"prompt": q, "answer": ans + "!"} for q, ans in sums])    # GRPO: exact match
    key_rows = [{"prompt": f"what is the key of item {n}?", "answer": str(k), "pi": f"the key is {k}."}
                for n, k in keys.items()]
    _jsonl(root / "keys_train.jsonl", key_rows[:KEY_TRAIN])
    _jsonl(root / "keys_heldout.jsonl", key_rows[KEY_TRAIN:])
    run(load_config("sft", overrides=[
        f"model.student={root / 'init'}", f"data.train={root / 'sft.jsonl'}", f"run.out={root / 'teacher_run'}",
        f"optim.steps={sft_steps}", "optim.prompts_per_step=16", "optim.micro_batch=16", "optim.lr=3e-3",
        "rollout.max_new_tokens=4", f"run.save_every={sft_steps}", "run.progress=false", "guard.enabled=false",
        f"run.seed={seed}", "run.threads=1"]))      # one thread: a shared 2-core VM thrashes with more
    export_run(root / "teacher_run", root / "teacher")
    marker.write_text(json.dumps(spec))
    return root


def opsd_overrides(root: Path, train: str, evaluate: str, out: Path, steps: int, check: str = "",
                   fixed_pi: str = "", lr: float = 1e-3) -> list[str]:
    """A self-distill run on the PI testbed: PI before the question (as in the teacher's SFT data)."""
    return [f"model.student={root / 'teacher'}", f"data.train={root / train}", f"data.eval={root / evaluate}",
            f"data.pi={fixed_pi}", "data.pi_placement=user", f"run.out={out}", f"optim.steps={steps}",
            "optim.prompts_per_step=16", "optim.micro_batch=16", f"optim.lr={lr}", "rollout.max_new_tokens=4",
            f"run.eval_every={steps}", "run.eval_limit=32", f"run.check={check}", "run.save_every=1000",
            "run.progress=false", "run.threads=1", "guard.enabled=false", "run.sample_every=5"]


# ----------------------------------------------------------------------------- teachers for C6

def build_c6_teachers(root: Path, seed: int = 0) -> dict[str, Path]:
    """Two OPD teachers for the addition testbed at `root` (built with students=(60, 100)).

    - `teacher_grpo`: the student's size and answer format: the SFT-100 student improved by
      GRPO (numeric reward, G = 4), i.e. the "RLVR-adapted" teacher;
    - `teacher_offformat`: larger (3 layers, hidden 96) and trained by SFT to answer
      "the answer is N" instead of "N", i.e. a stronger teacher in another format.
    """

    root = Path(root)
    marker = root / "c6_teachers.json"
    paths = {"grpo": root / "teacher_grpo", "offformat": root / "teacher_offformat"}
    if marker.is_file() and json.loads(marker.read_text()) == {"seed": seed}:
        return paths
    common = ["run.progress=false", "guard.enabled=false", f"run.seed={seed}", "rollout.max_new_tokens=6",
              "run.threads=1"]
    shutil.rmtree(root / "grpo_run", ignore_errors=True)
    run(load_config("grpo", overrides=[
        f"model.student={root / 'student_100'}", f"data.train={root / 'task.jsonl'}", f"run.out={root / 'grpo_run'}",
        "optim.steps=40", "optim.prompts_per_step=8", "optim.micro_batch=32", "optim.lr=3e-4",
        "rollout.samples_per_prompt=4", "reward.kind=numeric", "run.save_every=40", *common]))
    export_run(root / "grpo_run", paths["grpo"])
    save_tiny(root / "init_large", layers=3, hidden=96, seed=seed + 100, tokenizer=build_tokenizer())
    rows = [json.loads(line) for line in (root / "task.jsonl").read_text().splitlines()]
    _jsonl(root / "task_offformat.jsonl", [dict(r, response=f"the answer is {r['answer']}") for r in rows])
    shutil.rmtree(root / "offformat_run", ignore_errors=True)
    run(load_config("sft", overrides=[
        f"model.student={root / 'init_large'}", f"data.train={root / 'task_offformat.jsonl'}",
        f"run.out={root / 'offformat_run'}", "optim.steps=400", "optim.prompts_per_step=16", "optim.micro_batch=16",
        "optim.lr=3e-3", "run.save_every=400", *common]))
    export_run(root / "offformat_run", paths["offformat"])
    marker.write_text(json.dumps({"seed": seed}))
    return paths


# ----------------------------------------------------------------------------- a hedging teacher (C5)

def build_hedge_teacher(root: Path, seed: int = 0, sft_steps: int = 400) -> Path:
    """A teacher for the addition testbed that revises itself: besides "N", its SFT data holds
    "W wait N" for a wrong digit W, so after a wrong first digit it says "wait" and corrects."""
    import random

    root = Path(root)
    marker, path = root / "hedge_teacher.json", root / "teacher_hedge"
    if marker.is_file() and json.loads(marker.read_text()) == {"seed": seed, "steps": sft_steps}:
        return path
    rng = random.Random(seed)
    rows = []
    for line in (root / "task.jsonl").read_text().splitlines():
        r = json.loads(line)
        wrong = rng.choice([d for d in range(10) if str(d) != r["answer"]])
        rows += [dict(r, response=r["answer"]), dict(r, response=r["answer"]), dict(r, response=f"{wrong} wait {r['answer']}")]
    _jsonl(root / "task_hedge.jsonl", rows)
    shutil.rmtree(root / "hedge_run", ignore_errors=True)
    run(load_config("sft", overrides=[
        f"model.student={root / 'init'}", f"data.train={root / 'task_hedge.jsonl'}", f"run.out={root / 'hedge_run'}",
        f"optim.steps={sft_steps}", "optim.prompts_per_step=16", "optim.micro_batch=16", "optim.lr=3e-3",
        "rollout.max_new_tokens=6", f"run.save_every={sft_steps}", "run.progress=false", "guard.enabled=false",
        f"run.seed={seed}", "run.threads=1"]))
    export_run(root / "hedge_run", path)
    marker.write_text(json.dumps({"seed": seed, "steps": sft_steps}))
    return path
