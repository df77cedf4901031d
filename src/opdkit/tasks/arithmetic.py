"""Procedurally generated tasks with verifiable answers: arithmetic word problems.

    opdkit task arithmetic --n 2000 --out data/arith        # train.jsonl + heldout.jsonl
    opdkit task arithmetic --n 2000 --heldout templates --out data/arith-t

Each problem is one of several templates ("Tom has 7 apples and buys 5 more. How many
apples does Tom have now?") filled with small numbers; the answer is one integer, so the
`numeric` reward and eval accuracy verify it. Two held-out splits:

- `pairs` (default): every template in both splits; an operand pair (template, a, b) is in
  exactly one split, chosen by a hash, so held-out problems are never seen in training.
- `templates`: held-out problems use templates that training never shows (does the skill
  transfer to new wording?).

Generation is deterministic in (seed, n, split): the same arguments write the same files.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from opdkit.errors import ConfigError

NAMES = ["Tom", "Ana", "Lee", "Mia", "Sam", "Ravi", "Zoe", "Omar"]
THINGS = ["apples", "books", "coins", "marbles", "stickers", "pens"]


@dataclass(frozen=True)
class Template:
    name: str
    text: str                          # .format(name=, thing=, a=, b=)
    answer: Callable[[int, int], int]
    valid: Callable[[int, int], bool] = lambda a, b: True


# The first TRAIN_TEMPLATES templates are training templates under split="templates".
TEMPLATES = [
    Template("add_buy", "{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?",
             lambda a, b: a + b),
    Template("sub_give", "{name} has {a} {thing} and gives away {b}. How many {thing} are left?",
             lambda a, b: a - b, lambda a, b: a >= b),
    Template("add_two", "{name} found {a} {thing} on Monday and {b} on Tuesday. How many {thing} in total?",
             lambda a, b: a + b),
    Template("mul_boxes", "There are {a} boxes with {b} {thing} in each box. How many {thing} are there?",
             lambda a, b: a * b, lambda a, b: a <= 9 and b <= 9),
    Template("sub_lose", "{name} had {a} {thing} and lost {b} of them. How many {thing} does {name} have?",
             lambda a, b: a - b, lambda a, b: a >= b),
    Template("add_friend", "{name} has {a} {thing}. A friend gives {name} {b} {thing}. How many {thing} now?",
             lambda a, b: a + b),
]
TRAIN_TEMPLATES = 4
SPLITS = ("pairs", "templates")


def _in_heldout(template: str, a: int, b: int, fraction: float) -> bool:
    """A stable hash of the operand pair decides its split (independent of seed and n)."""
    digest = hashlib.sha256(f"{template}:{a}:{b}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def problem(t: Template, a: int, b: int, rng: random.Random) -> dict:
    text = t.text.format(name=rng.choice(NAMES), thing=rng.choice(THINGS), a=a, b=b)
    return {"prompt": text, "answer": str(t.answer(a, b)), "template": t.name, "response": str(t.answer(a, b))}


def generate(n: int, split: str = "pairs", heldout: str = "heldout", seed: int = 0, max_operand: int = 20,
             heldout_fraction: float = 0.2) -> list[dict]:
    """n problems of one side (`train` or `heldout`) of a split, deterministic by seed."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
    if n < 1 or max_operand < 2:
        raise ConfigError("need n >= 1 and max_operand >= 2")
    want_heldout = heldout == "heldout"
    if split == "templates":
        pool = TEMPLATES[TRAIN_TEMPLATES:] if want_heldout else TEMPLATES[:TRAIN_TEMPLATES]
    else:
        pool = TEMPLATES
    rng = random.Random(f"{seed}:{split}:{heldout}")
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n:
            raise ConfigError(f"could not draw {n} problems with max_operand={max_operand}; raise it")
        t = rng.choice(pool)
        a, b = rng.randint(1, max_operand), rng.randint(1, max_operand)
        if not t.valid(a, b):
            continue
        if split == "pairs" and _in_heldout(t.name, a, b, heldout_fraction) != want_heldout:
            continue
        out.append(problem(t, a, b, rng))
    return out


def write_task(out: str | Path, n: int, n_heldout: int | None = None, split: str = "pairs", seed: int = 0,
               max_operand: int = 20) -> tuple[Path, Path]:
    """Write OUT/train.jsonl (n) and OUT/heldout.jsonl (n_heldout, default n // 10 or at least 32)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_heldout = n_heldout or max(32, n // 10)
    paths = []
    for side, count in (("train", n), ("heldout", n_heldout)):
        path = out / f"{side}.jsonl"
        rows = generate(count, split, side, seed, max_operand)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths[0], paths[1]
