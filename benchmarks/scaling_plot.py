"""Plot benchmarks/scaling_vs_trl.py's results.json: step time and peak RSS, opdkit vs TRL, as cost grows.

    python benchmarks/scaling_plot.py benchmarks/out/scaling/results.json docs/scaling_vs_trl.png

Left column: the SmolLM2 pair against the response length: seconds per 1,000 sampled tokens (the
step time over batch x length, so points at different batches compare) and peak RSS (batch annotated).
Right column: the teacher vocabulary, SmolLM2 (49k) vs Gemma-3 (262k)
at the shortest length both pairs ran. Arms killed at the memory cap are drawn as an x at the RSS
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
    lengths = {p: {m["length"] for (q, a), m in meds.items() if m["pair"] == p} for p in ("smol", "gemma")}
    shared = sorted(lengths["smol"] & lengths["gemma"])
    if not shared:
        for ax in (ax_time, ax_rss):
            ax.text(0.5, 0.5, "no length run on both pairs", ha="center", transform=ax.transAxes)
        return
    length = shared[0]
    arms = [a for a in STYLE if all(any(a == b and m["pair"] == p and m["length"] == length for (q, b), m in meds.items())
                                    for p in ("smol", "gemma"))]
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        color, _, label = STYLE[arm]
        for j, pair in enumerate(("smol", "gemma")):
            m = next(m for (q, a), m in meds.items() if a == arm and m["pair"] == pair and m["length"] == length)
            x = j + i * width
            ax_time.bar(x, m["median_step_wall_s"] or 0, width, color=color, label=label if j == 0 else None)
            ax_rss.bar(x, (m["process_peak_rss_mib"] or m["max_rss_seen"]) / 1024, width, color=color,
                       hatch=None if m["process_peak_rss_mib"] else "xx")
    for ax, ylabel in ((ax_time, "median step s"), (ax_rss, "peak RSS GiB (process)")):
        ax.set_xticks([0.4 - width / 2, 1.4 - width / 2], ["SmolLM2 (V 49,152)", "Gemma-3-270M (V 262,144)"])
        ax.set_ylabel(ylabel)
        ax.set_title(f"teacher vocabulary, {length}-token responses", fontsize=9)
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


if __name__ == "__main__":
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
