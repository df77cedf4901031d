"""examples/heal/table.py --summary: one row per healing arm from its metrics, time log and paired results."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "examples" / "heal" / "table.py"


def write_arm(root: Path, arm: str, kl: list[float], before: list[bool], after: list[bool]) -> None:
    run = root / arm
    run.mkdir(parents=True)
    rows = [{"step": 8 * i, "eval/teacher_kl": v, "eval/teacher_nll": 1.0 - 0.1 * i, "eval/pk_over_qk": 1.0,
             "eval/sample_entropy": 2.0, "eval/repeat_ratio": 0.2} for i, v in enumerate(kl)]
    rows.insert(1, {"step": 1, "train/loss": 0.5})                  # training rows are not evaluations
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / f"{arm}.log").write_text("\tElapsed (wall clock) time (h:mm:ss or m:ss): 12:34.56\n"
                                     "\tMaximum resident set size (kbytes): 4500000\n")
    correct = {"student before training": before, f"{arm} step_00000016": after}
    (root / f"paired_{arm}.json").write_text(json.dumps({"correct": correct}))


def summary(root: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(TABLE), str(root), "--summary"], capture_output=True, text=True,
                         env=env, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("| ")][1:]


def test_summary_row_has_the_kl_fall_and_the_paired_mcnemar_test(tmp_path):
    # 5 problems gained, none lost: McNemar's exact p = 2 * 0.5**5 = 0.0625
    write_arm(tmp_path, "healed", [0.8, 0.5, 0.4], [False] * 10, [True] * 5 + [False] * 5)
    # one lost, one gained: p = 1; KL rises above its start
    write_arm(tmp_path, "collapsed", [0.5, 0.6, 0.9], [True] + [False] * 9, [False, True] + [False] * 8)
    rows = {line.split(" | ")[0][2:]: line for line in summary(tmp_path)}
    assert set(rows) == {"healed", "collapsed"}
    assert "0.800 -> 0.400 -> 0.400 (best -50%, end -50%)" in rows["healed"]
    assert "5/10 (lost 0, gained 5, p = 0.062)" in rows["healed"]
    assert "12:34.56, 4.50 GB" in rows["healed"]
    assert "0.500 -> 0.500 -> 0.900 (best +0%, end +80%)" in rows["collapsed"]
    assert "1/10 (lost 1, gained 1, p = 1)" in rows["collapsed"]


def test_an_arm_without_paired_results_shows_a_dash(tmp_path):
    write_arm(tmp_path, "arm", [0.6, 0.3], [False] * 4, [True] * 4)
    (tmp_path / "paired_arm.json").unlink()
    (row,) = summary(tmp_path)
    assert row.split(" | ")[7] == "-"
