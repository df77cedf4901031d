"""Issue 18 item 4: the two arms of examples/warm_smollm2.yaml on one step axis, a table, the pre-registered
verdicts (RESULTS.md, "Issue 18 item 4") and a figure.

    python examples/heal/warm_table.py runs/warm --figure docs/warm_far_student.png

Arm A is the `opd_alone` stage; arm B is `sft` followed by `opd`, whose steps are counted on from the end of
`sft` (its step k is total step sft_steps + k), so both arms share the axis "optimizer steps spent". The
follow-ups C (`sft` then `opd_rkl`) and D (`sft40`, SFT continued to 40 steps) are added where they ran.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from table import KEYS, evals, time_log  # examples/heal/table.py (same directory)

LOOP_REPEAT, LOOP_ENTROPY = 0.6, 0.5       # the loop signature, as pre-registered
FOLLOW_UPS = {"C: SFT, then full RKL": ("sft", "opd_rkl"), "D: SFT alone": ("sft40",)}


def chained(stages: list[list[dict]]) -> list[dict]:
    """Evaluations of consecutive stages on one axis: each stage's steps are offset by the steps before it."""
    out, offset = [], 0
    for rows in stages:
        out += [{**r, "step": r["step"] + offset, "stage_step": r["step"]} for r in rows]
        offset = out[-1]["step"] if out else offset
    return out


def loops(row: dict) -> bool:
    return row.get("repeat_ratio", 0.0) >= LOOP_REPEAT or row.get("sample_entropy", 1e9) < LOOP_ENTROPY


def collapse_verdict(rows: list[dict], end: int) -> str:
    """Q1 on arm A: collapses / stalls / improves, by the pre-registered thresholds."""
    kl = [r["teacher_kl"] for r in rows]
    late = [r for r in rows if r["step"] >= end * 3 // 4]
    if kl[-1] > 1.2 * min(kl) or any(loops(r) for r in late):
        return "collapses"
    return "stalls" if min(kl) > 0.8 * kl[0] else "improves"


def fix3_verdict(alone: list[dict], warm: list[dict], opd_half: list[dict]) -> dict:
    """H: (i) warm end KL <= 0.8 x alone's; (ii) warm end <= 1.2 x its best; (iii) no loops in warm's OPD half."""
    ratio = warm[-1]["teacher_kl"] / alone[-1]["teacher_kl"]
    best = min(r["teacher_kl"] for r in warm)
    checks = {"kl_ratio_to_alone": ratio, "i": ratio <= 0.8, "ii": warm[-1]["teacher_kl"] <= 1.2 * best,
              "iii": not any(loops(r) for r in opd_half)}
    checks["holds"] = checks["i"] and checks["ii"] and checks["iii"]
    checks["null"] = 0.8 < ratio < 1.2 or not checks["iii"]
    return checks


def markdown(rows: list[dict]) -> str:
    keys = [k for k in KEYS if any(k in r for r in rows)]
    lines = ["| step | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    lines += [f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def figure(path: Path, arms: dict[str, list[dict]], switch: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("teacher_kl", "held-out KL(student || teacher)"), ("teacher_nll", "teacher NLL of greedy answers"),
              ("repeat_ratio", "greedy 3-gram repeat ratio"), ("sample_entropy", "entropy on own samples")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, rows in arms.items():
            ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], "o-", label=name)
        ax.axvline(switch, color="grey", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer steps (8 prompts each)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, nargs="?", default=Path("runs/warm"))
    ap.add_argument("--figure", type=Path, default=None)
    args = ap.parse_args()
    alone = evals(args.root / "opd_alone")
    sft = evals(args.root / "sft") if (args.root / "sft" / "metrics.jsonl").is_file() else []
    opd = evals(args.root / "opd") if (args.root / "opd" / "metrics.jsonl").is_file() else []
    warm = chained([sft, opd])
    print(f"arm A opd_alone ({time_log(args.root / 'opd_alone.log')}): Q1 {collapse_verdict(alone, alone[-1]['step'])}")
    print(markdown(alone))
    if warm:
        print(f"\narm B sft -> opd ({time_log(args.root / 'sft_opd.log')})")
        print(markdown(warm))
    if opd:
        print("\nH:", json.dumps(fix3_verdict(alone, warm, warm[len(sft):])))
    arms = {"A: OPD alone": alone, "B: SFT, then OPD": warm}
    for name, stages in FOLLOW_UPS.items():                  # the exploratory arms C and D, where they ran
        if all((args.root / s / "metrics.jsonl").is_file() for s in stages):
            arms[name] = chained([evals(args.root / s) for s in stages])
            print(f"\n{name} ({time_log(args.root / f'{stages[-1]}.log')})")
            print(markdown(arms[name]))
    if args.figure:
        figure(args.figure, arms, sft[-1]["step"] if sft else 0)


if __name__ == "__main__":
    main()
