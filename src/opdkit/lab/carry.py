"""Multi-digit addition written digit by digit with carries: answers many tokens long.

"47+38=" -> "7+8=15 4+3+1=8 = 85": one column per step, right to left, the carry from the
previous column written as "+1", then the answer after the marker " = ". About 20 tokens per
answer (the tiny BPE keeps digits single), so a cut at 25/50/75% of a sampled answer lands
inside the working, where an early mistake decides the result (C4). The numeric reward reads
the last number, i.e. the answer after the marker.

`build_carry_testbed(dir)` trains a Qwen2-config tiny teacher by SFT through opdkit's own loop
and exports `teacher/` and `student_<step>/` (earlier SFT checkpoints), cached like the
single-digit testbed.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from opdkit.engine.config import load_config
from opdkit.engine.export import export_run
from opdkit.engine.runner import run
from opdkit.lab.tiny import build_tokenizer, save_tiny

SFT_STEPS = 1200            # the teacher; students are checkpoints at STUDENT_STEPS
STUDENT_STEPS = (300,)
MAX_NEW_TOKENS = 24
HELDOUT = 32                # held-out problems for evaluating OPD on the carry task


def carry_trace(a: int, b: int) -> str:
    """The worked answer for a + b (non-negative integers), columns right to left."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    columns, carry, digits = [], 0, []
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        columns.append(f"{x}+{y}" + ("+1" if carry else "") + f"={total}")
        carry, digits = total // 10, digits + [str(total % 10)]
    answer = ("1" if carry else "") + "".join(reversed(digits))
    return " ".join(columns) + f" = {answer}"


def carry_items(count: int, seed: int, digits: int = 2) -> list[dict]:
    """`count` distinct problems with `digits`-digit operands, at least half of them with a carry."""
    rng = random.Random(seed)
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    seen, rows = set(), []
    while len(rows) < count:
        a, b = rng.randint(low, high), rng.randint(low, high)
        carries = any(int(x) + int(y) >= 10 for x, y in zip(str(a)[::-1], str(b)[::-1]))
        if (a, b) in seen or (not carries and sum(1 for r in rows if not r["carry"]) >= count // 2):
            continue
        seen.add((a, b))
        rows.append({"prompt": f"{a}+{b}=", "answer": str(a + b), "response": carry_trace(a, b), "carry": carries})
    return rows


def build_carry_testbed(root: str | Path, seed: int = 0, items: int = 200, sft_steps: int = SFT_STEPS,
                        students: tuple[int, ...] = STUDENT_STEPS, init_seed: int | None = None) -> Path:
    """Train the teacher (Qwen2 config, 2 layers, hidden 64) in `root/teacher_run`; export
    `root/teacher`, `root/student_<step>` and `root/task.jsonl` (the training problems, from `seed`).
    `init_seed` (default `seed`): the init and SFT seed, so another lineage on the same problems."""

    root = Path(root)
    marker = root / "carry_testbed.json"
    init_seed = seed if init_seed is None else init_seed
    spec = {"seed": seed, "items": items, "sft_steps": sft_steps, "students": sorted(students), "arch": "qwen2",
            **({"init_seed": init_seed} if init_seed != seed else {})}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "teacher_run", ignore_errors=True)
    save_tiny(root / "init", layers=2, hidden=64, seed=init_seed, tokenizer=build_tokenizer(), arch="qwen2")
    task = root / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in carry_items(items, seed)))
    run(load_config("sft", overrides=[
        f"model.student={root / 'init'}", f"data.train={task}", f"run.out={root / 'teacher_run'}",
        f"optim.steps={sft_steps}", "optim.prompts_per_step=16", "optim.micro_batch=16", "optim.lr=3e-3",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS}", f"run.save_every={min(students + (sft_steps,))}",
        f"run.keep_checkpoints={sft_steps}", "run.progress=false", "guard.enabled=false", f"run.seed={init_seed}",
        "run.threads=1"]))
    export_run(root / "teacher_run", root / "teacher")
    for step in students:
        export_run(root / "teacher_run", root / f"student_{step}", root / "teacher_run" / "checkpoints" / f"step_{step:08d}")
    shutil.rmtree(root / "teacher_run" / "checkpoints", ignore_errors=True)      # exported; keep the cache small
    marker.write_text(json.dumps(spec))
    return root


def write_carry_heldout(root: Path, seed: int, count: int = HELDOUT) -> Path:
    """`root/task_heldout.jsonl`: `count` problems that are not among the training problems, and
    `root/task_train.jsonl` = the training problems (what OPD trains on)."""
    train = {json.loads(line)["prompt"] for line in (root / "task.jsonl").read_text().splitlines()}
    out, rows = root / "task_heldout.jsonl", []
    for row in carry_items(count + len(train), seed + 7):
        if row["prompt"] not in train and len(rows) < count:
            rows.append(row)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copyfile(root / "task.jsonl", root / "task_train.jsonl")
    return out


def revised_trace(a: int, b: int) -> str:
    """The worked answer with a revision: the first column's result written one too high, then
    ' wait ' and the right result ("7+8=16 wait 15 4+3+1=8 = 85")."""
    first, _, rest = carry_trace(a, b).partition(" ")
    lhs, result = first.split("=")
    return f"{lhs}={int(result) + 1} wait {result} {rest}"


def build_carry_hedge_teacher(root: Path, seed: int = 0, sft_steps: int = SFT_STEPS) -> Path:
    """`root/teacher_hedge`: trained like the carry teacher (same init), on each problem twice plainly
    and once with a revision (`revised_trace`), so after a wrong first column it says "wait"."""
    marker, path = root / "hedge_teacher.json", root / "teacher_hedge"
    if marker.is_file() and json.loads(marker.read_text()) == {"seed": seed, "steps": sft_steps}:
        return path
    rows = []
    for line in (root / "task.jsonl").read_text().splitlines():
        r = json.loads(line)
        a, b = (int(x) for x in r["prompt"].rstrip("=").split("+"))
        rows += [r, r, dict(r, response=revised_trace(a, b))]
    (root / "task_hedge.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.rmtree(root / "hedge_run", ignore_errors=True)
    run(load_config("sft", overrides=[
        f"model.student={root / 'init'}", f"data.train={root / 'task_hedge.jsonl'}", f"run.out={root / 'hedge_run'}",
        f"optim.steps={sft_steps}", "optim.prompts_per_step=16", "optim.micro_batch=16", "optim.lr=3e-3",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS + 4}", f"run.save_every={sft_steps}", "run.progress=false",
        "guard.enabled=false", f"run.seed={seed}", "run.threads=1"]))
    export_run(root / "hedge_run", path)
    shutil.rmtree(root / "hedge_run" / "checkpoints", ignore_errors=True)
    marker.write_text(json.dumps({"seed": seed, "steps": sft_steps}))
    return path
