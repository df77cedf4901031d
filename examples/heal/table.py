"""Markdown tables of the healing arms (RESULTS.md, issue 18) from runs/heal/<arm>/metrics.jsonl and <arm>.log.

    python examples/heal/table.py [runs/heal]              # one table per arm, every evaluation
    python examples/heal/table.py runs/heal64c --summary   # one row per arm, with paired_<arm>.json's accuracy

`--summary` reads the per-problem results that examples/heal/paired_accuracy.py wrote to
ROOT/paired_<arm>.json (the arm's newest checkpoint against the untrained student, paired).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from opdkit.lab.proportions import paired_accuracy

KEYS = ("teacher_kl", "accuracy", "teacher_nll", "pk_over_qk", "p_k", "q_k", "sample_entropy",
        "sample_length_mean", "sample_repeat_ratio", "length_mean", "repeat_ratio", "hedge_rate", "eos_rate")


def evals(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"step": r["step"], **{k: r[f"eval/{k}"] for k in KEYS if f"eval/{k}" in r}} for r in rows
            if "eval/teacher_kl" in r]


def time_log(log: Path) -> str:
    text = log.read_text() if log.is_file() else ""
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return f"{wall.group(1) if wall else '?'}, {int(rss.group(1)) / 1e6:.2f} GB" if rss else "running or killed"


def verdict(rows: list[dict]) -> str:
    kl = [r["teacher_kl"] for r in rows]
    best = min(kl)
    at = kl.index(best)
    fell, kept = best <= 0.5 * kl[0], all(v <= 1.2 * best for v in kl[at:])
    acc = (rows[0].get("accuracy"), rows[-1].get("accuracy"))
    return (f"best {best:.3f} = {best / kl[0]:.2f} x start ({'>= 50% fall' if fell else 'misses the 50% fall'}); "
            f"end {kl[-1] / best:.2f} x best ({'within 20%' if kept else 'not within 20%'}); accuracy {acc[0]} -> {acc[1]}")


def paired(root: Path, arm: str) -> str:
    """'k/n (lost l, gained g, p = ...)' of the arm's newest checkpoint against the untrained student, or '-'."""
    path = root / f"paired_{arm}.json"
    if not path.is_file():
        return "-"
    correct = json.loads(path.read_text())["correct"]
    before = correct["student before training"]
    after = [v for k, v in correct.items() if k.startswith(f"{arm} ")]
    if not after:
        return "-"
    p = paired_accuracy(before, after[-1])
    return f"{p['after']}/{p['n']} (lost {p['lost']}, gained {p['gained']}, p = {p['p_mcnemar']:.2g})"


def summary_row(root: Path, run: Path, rows: list[dict]) -> str:
    """One markdown row: the arm, its steps, KL start -> best -> end, the end's other metrics, paired accuracy."""
    kl = [r["teacher_kl"] for r in rows]
    best, end = min(kl), rows[-1]
    fall = f"{kl[0]:.3f} -> {best:.3f} -> {kl[-1]:.3f} (best {best / kl[0] - 1:+.0%}, end {kl[-1] / kl[0] - 1:+.0%})"
    cells = [run.name, str(end["step"]), fall] + [f"{end[k]:.3f}" if k in end else "-" for k in
                                                 ("teacher_nll", "pk_over_qk", "sample_entropy", "repeat_ratio")]
    return "| " + " | ".join(cells + [paired(root, run.name), time_log(root / f"{run.name}.log")]) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, nargs="?", default=Path("runs/heal"))
    ap.add_argument("--summary", action="store_true", help="one row per arm instead of one table per arm")
    args = ap.parse_args()
    runs = [(run, evals(run)) for run in sorted(p for p in args.root.iterdir() if (p / "metrics.jsonl").is_file())]
    runs = [(run, rows) for run, rows in runs if rows]
    if args.summary:
        print("| arm | steps | held-out KL: start -> best -> end | teacher NLL | P_K/Q_K | entropy | repeat | "
              "paired accuracy (85) | wall, peak RSS |")
        print("|" + "---|" * 9)
        for run, rows in runs:
            print(summary_row(args.root, run, rows))
        return
    for run, rows in runs:
        print(f"\n{run.name} ({time_log(args.root / f'{run.name}.log')}): {verdict(rows)}\n")
        print("| step | " + " | ".join(KEYS) + " |")
        print("|" + "---|" * (len(KEYS) + 1))
        for r in rows:
            print(f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in KEYS) + " |")


if __name__ == "__main__":
    main()
