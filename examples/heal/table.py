"""Markdown tables of the healing arms (RESULTS.md, issue 18) from runs/heal/<arm>/metrics.jsonl and <arm>.log.

    python examples/heal/table.py [runs/heal]
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

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


def main(root: Path) -> None:
    for run in sorted(p for p in root.iterdir() if (p / "metrics.jsonl").is_file()):
        rows = evals(run)
        if not rows:
            continue
        print(f"\n{run.name} ({time_log(root / f'{run.name}.log')}): {verdict(rows)}\n")
        print("| step | " + " | ".join(KEYS) + " |")
        print("|" + "---|" * (len(KEYS) + 1))
        for r in rows:
            print(f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in KEYS) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/heal"))
