"""Procedural arithmetic word problems: right answers, deterministic, disjoint splits."""
from __future__ import annotations

import re

import pytest

from opdkit.errors import ConfigError
from opdkit.tasks.arithmetic import TEMPLATES, TRAIN_TEMPLATES, generate, write_task
from opdkit.tasks.rewards import numeric_reward

BY_NAME = {t.name: t for t in TEMPLATES}


def operands(row: dict) -> tuple[int, int]:
    a, b = map(int, re.findall(r"\d+", row["prompt"]))
    return a, b


@pytest.mark.parametrize("split", ["pairs", "templates"])
def test_answers_are_right_and_verifiable(split):
    rows = generate(300, split, "train") + generate(100, split, "heldout")
    for row in rows:
        a, b = operands(row)
        t = BY_NAME[row["template"]]
        assert int(row["answer"]) == t.answer(a, b) >= 0
        assert numeric_reward(f"so the answer is {row['answer']}", row["answer"]) == 1.0
    assert len({r["template"] for r in rows}) == len(TEMPLATES)     # every template appears


def test_pairs_split_never_shares_a_problem_between_train_and_heldout():
    train = {(r["template"], *operands(r)) for r in generate(1500, "pairs", "train")}
    heldout = {(r["template"], *operands(r)) for r in generate(300, "pairs", "heldout")}
    assert train and heldout and not train & heldout


def test_templates_split_holds_out_whole_templates():
    train = {r["template"] for r in generate(500, "templates", "train")}
    heldout = {r["template"] for r in generate(200, "templates", "heldout")}
    assert train == {t.name for t in TEMPLATES[:TRAIN_TEMPLATES]}
    assert heldout == {t.name for t in TEMPLATES[TRAIN_TEMPLATES:]}


def test_deterministic_by_seed(tmp_path):
    a = write_task(tmp_path / "a", 50, seed=3)
    b = write_task(tmp_path / "b", 50, seed=3)
    c = write_task(tmp_path / "c", 50, seed=4)
    assert [p.read_text() for p in a] == [p.read_text() for p in b]
    assert a[0].read_text() != c[0].read_text()
    assert len(a[0].read_text().splitlines()) == 50 and len(a[1].read_text().splitlines()) == 32


def test_cli_writes_the_task_and_refuses_bad_sizes(tmp_path, capsys):
    from opdkit.cli import main
    assert main(["task", "arithmetic", "--n", "20", "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "heldout.jsonl").is_file()
    assert main(["task", "arithmetic", "--n", "0", "--out", str(tmp_path / "u")]) == 2
    assert "n >= 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="split"):
        generate(5, "numbers")
