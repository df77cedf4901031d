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
                        students: tuple[int, ...] = STUDENT_STEPS) -> Path:
    """Train the teacher (Qwen2 config, 2 layers, hidden 64) in `root/teacher_run`; export
    `root/teacher`, `root/student_<step>` and `root/task.jsonl` (the training problems)."""

    root = Path(root)
    marker = root / "carry_testbed.json"
    spec = {"seed": seed, "items": items, "sft_steps": sft_steps, "students": sorted(students), "arch": "qwen2"}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return root
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "teacher_run", ignore_errors=True)
    save_tiny(root / "init", layers=2, hidden=64, seed=seed, tokenizer=build_tokenizer(), arch="qwen2")
    task = root / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in carry_items(items, seed)))
    run(load_config("sft", overrides=[
        f"model.student={root / 'init'}", f"data.train={task}", f"run.out={root / 'teacher_run'}",
        f"optim.steps={sft_steps}", "optim.prompts_per_step=16", "optim.micro_batch=16", "optim.lr=3e-3",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS}", f"run.save_every={min(students + (sft_steps,))}",
        f"run.keep_checkpoints={sft_steps}", "run.progress=false", "guard.enabled=false", f"run.seed={seed}",
        "run.threads=1"]))
    export_run(root / "teacher_run", root / "teacher")
    for step in students:
        export_run(root / "teacher_run", root / f"student_{step}", root / "teacher_run" / "checkpoints" / f"step_{step:08d}")
    shutil.rmtree(root / "teacher_run" / "checkpoints", ignore_errors=True)      # exported; keep the cache small
    marker.write_text(json.dumps(spec))
    return root
