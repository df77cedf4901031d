"""Plots of a run directory's metrics.jsonl: training loss, response length, evaluation curves.

    opdkit plot runs/opsd-spanish          # writes runs/opsd-spanish/metrics.png
"""
from __future__ import annotations

from pathlib import Path

from opdkit.engine.metrics import read_metrics, require_run
from opdkit.errors import RunDirError

PANELS = [
    ("train/loss", "training loss (step token mean)"),
    ("rollout/length_mean", "sampled response length"),
    ("eval/teacher_kl", "held-out KL(student || teacher)"),
    ("eval/rule_rate", "held-out rule-following rate"),
    ("eval/accuracy", "held-out accuracy"),
    ("eval/length_mean", "held-out greedy length"),
]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    require_run(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    panels = [(key, title) for key, title in PANELS if any(key in r for r in rows)]
    if not panels:
        raise RunDirError(f"{run_dir / 'metrics.jsonl'} has none of the plotted metrics")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if key.startswith("eval/") else None)
        teacher_key = key.replace("eval/", "eval/teacher_")
        ceiling = [r[teacher_key] for r in rows if teacher_key != key and isinstance(r.get(teacher_key), (int, float))]
        if ceiling and key != "eval/teacher_kl":
            ax.axhline(ceiling[0], color="grey", linestyle="--", label="teacher (its own prompt)")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    fig.suptitle(run_dir.name, fontsize=10)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "metrics.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
