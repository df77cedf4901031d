"""Plot benchmarks/scaling_vs_trl.py's results.json: step time and peak RSS, opdkit vs TRL, as cost grows.

    python benchmarks/scaling_plot.py benchmarks/out/scaling/results.json [MORE.json ...] docs/scaling_vs_trl.png

Left column: the SmolLM2 pair against the response length: seconds per 1,000 sampled tokens (the
step time over batch x length, so points at different batches compare) and peak RSS (batch annotated).
Right column: the teacher vocabulary, SmolLM2 (49k) vs Gemma-3 (262k)
at each length both pairs ran (rows of several results files are joined; each point's ratios are
from the run that measured it). Arms killed at the memory cap are drawn as an x at the RSS
they had reached. Every value comes from the file's rows (medians over an arm's ok repeats).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling_tables import medians  # noqa: E402

STYLE = {"trl_fp32": ("tab:red", "o", "TRL fp32"), "trl_bf16": ("tab:orange", "s", "TRL bf16"),
         "opdkit_default": ("tab:blue", "o", "opdkit defaults (fp32)"),
         "opdkit_lean_bf16_teacher": ("tab:green", "^", "opdkit bf16 sampler + teacher"),
         "opdkit_bf16": ("tab:purple", "s", "opdkit all bf16")}


def length_axis(ax_time, ax_rss, meds: dict, pair: str) -> None:
    for arm, (color, marker, label) in STYLE.items():
        pts = sorted((m["length"], m["batch"], m) for (p, a), m in meds.items() if a == arm and m["pair"] == pair)
        if len(pts) < 2:
            continue
        xs = [length for length, _, _ in pts]
        ax_time.plot(xs, [1000 / m["tokens_per_s_step"] if m["tokens_per_s_step"] else None for *_, m in pts],
                     color=color, marker=marker, label=label)
        ax_rss.plot(xs, [m["process_peak_rss_mib"] / 1024 if m["process_peak_rss_mib"] else None for *_, m in pts],
                    color=color, marker=marker, label=label)
        for length, batch, m in pts:
            if arm == "trl_fp32":
                ax_rss.annotate(f"batch {batch}", (length, (m["process_peak_rss_mib"] or m["max_rss_seen"]) / 1024),
                                textcoords="offset points", xytext=(-20, 8), fontsize=7)
            if m["process_peak_rss_mib"] is None:
                ax_rss.plot([length], [m["max_rss_seen"] / 1024], color=color, marker="x", markersize=12)
    for ax, ylabel in ((ax_time, "step s per 1k response tokens"), (ax_rss, "peak RSS GiB (process)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"response length (new tokens per row), {pair} pair")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_time.legend(fontsize=7)


def vocab_axis(ax_time, ax_rss, meds: dict) -> None:
    """Bars per arm for each (pair, length) where both pairs ran that length."""
    lengths = {p: {m["length"] for m in meds.values() if m["pair"] == p} for p in ("smol", "gemma")}
    groups = [(pair, length) for length in sorted(lengths["smol"] & lengths["gemma"]) for pair in ("smol", "gemma")]
    if not groups:
        for ax in (ax_time, ax_rss):
            ax.text(0.5, 0.5, "no length run on both pairs", ha="center", transform=ax.transAxes)
        return
    found = {(m["pair"], m["length"], a): m for (q, a), m in meds.items()}
    arms = [a for a in STYLE if all((p, n, a) in found for p, n in groups)]
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        color, _, label = STYLE[arm]
        for j, (pair, length) in enumerate(groups):
            m = found[(pair, length, arm)]
            speed = 1000 / m["tokens_per_s_step"] if m["tokens_per_s_step"] else 0
            ax_time.bar(j + i * width, speed, width, color=color, label=label if j == 0 else None)
            ax_rss.bar(j + i * width, (m["process_peak_rss_mib"] or m["max_rss_seen"]) / 1024, width, color=color,
                       hatch=None if m["process_peak_rss_mib"] else "xx")
    names = {"smol": "SmolLM2\nV 49,152", "gemma": "Gemma-3-270M\nV 262,144"}
    for ax, ylabel in ((ax_time, "step s per 1k response tokens"), (ax_rss, "peak RSS GiB (process)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))],
                      [f"{names[p]}\n{n} tokens (batch {found[(p, n, arms[0])]['batch']})" for p, n in groups], fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title("teacher vocabulary", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    ax_time.legend(fontsize=7)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    meds = medians(report)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    pair = "smol" if any(m["pair"] == "smol" for m in meds.values()) else next(iter(meds.values()))["pair"]
    length_axis(axes[0][0], axes[1][0], meds, pair)
    vocab_axis(axes[0][1], axes[1][1], meds)
    m = report["machine"]
    fig.suptitle(f"OPD step cost, opdkit vs TRL DistillationTrainer (RKL); {m['cpu']}, {report['threads']} thread(s) "
                 f"per arm, {report['started_utc']} UTC", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def merged(paths: list[Path]) -> dict:
    """One report from several results.json (rows joined; the first file's machine and threads)."""
    reports = [json.loads(p.read_text()) for p in paths]
    return {**reports[0], "rows": [row for r in reports for row in r["rows"]]}


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: scaling_plot.py RESULTS.json [MORE.json ...] OUT.png")
    plot(merged([Path(a) for a in sys.argv[1:-1]]), Path(sys.argv[-1]))
