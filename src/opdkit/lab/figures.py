"""Lab figures that are not training curves: C4's prefix-probe bars, the OPSD teacher comparison,
C1's word clouds of sampled responses before, at and after collapse.

Each returns an HTML fragment with the figure embedded as a PNG data URI (like the rest of
report.html), or "" when its claim did not run.
"""
from __future__ import annotations

import html
import statistics

from opdkit.analysis.report import RunData, _img, _png, word_clouds


def _bars(labels: list[str], per_seed: list[list[float]], ylabel: str, title: str) -> str:
    """Bars of the mean over seeds, each seed's value as a dot on its bar."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2))
    means = [statistics.fmean(v) for v in per_seed]
    ax.bar(labels, means, color="#4c72b0", alpha=0.8)
    for i, values in enumerate(per_seed):
        ax.plot([i] * len(values), values, "k.", markersize=6)
    for i, m in enumerate(means):
        ax.annotate(f"{m:.2f}", (i, m), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _img(_png(fig), title)


def prefix_bars(results: list[dict]) -> str:
    """C4: teacher accuracy alone and after each cut of the student's answers (mean over seeds)."""
    if not results:
        return ""
    cuts = sorted(k[len("teacher_after_"):] for k in results[0] if k.startswith("teacher_after_"))
    labels = ["alone"] + [f"after {float(c):.0%} cut" for c in cuts]
    per_seed = [[r["teacher_alone"] for r in results]] + [[r[f"teacher_after_{c}"] for r in results] for c in cuts]
    title = "C4: teacher accuracy continuing student prefixes"
    return f"<h3>{html.escape(title)}</h3>" + _bars(labels, per_seed, "greedy accuracy", title)


def self_teacher_bars(results: list[dict]) -> str:
    """C12: the student's rule rate and accuracy after OPSD with each self-teacher (mean over seeds)."""
    if not results:
        return ""
    weights = [w for w in ("frozen", "live", "ema") if w in results[0]]
    labels = [f"{w}\n{m}" for w in weights for m in ("rule rate", "accuracy")]
    per_seed = [[r[w][key] for r in results] for w in weights for key in ("rule_after", "acc_after")]
    title = "C12: after OPSD, by self-teacher weights"
    return f"<h3>{html.escape(title)}</h3>" + _bars(labels, per_seed, "greedy rate after OPSD", title)


def collapse_clouds(run_dir, numbers: dict | None) -> str:
    """C1 (K = 2, first seed): word clouds of the sampled responses at the first logged step, at the
    collapse step and at the last step (the paper's step 0 / 700 / 1000 figure)."""
    from pathlib import Path
    run_dir = Path(run_dir)
    if not numbers or not (run_dir / "samples.jsonl").is_file():
        return ""
    run = RunData(run_dir)
    last, collapse = run.rows[-1]["step"], numbers.get("collapse_step")
    wanted = [1, collapse, last] if collapse else [1, last // 2, last]
    labels = ["before", "at collapse" if collapse else "midway (no collapse)", "after"]
    clouds = word_clouds(run, steps=wanted)
    figures = "".join(
        f"<figure>{_img(uri, f'{label}, step {step}') if uri else '<p>no words</p>'}"
        f"<figcaption>{label}: step {step}</figcaption></figure>"
        for label, (step, uri) in zip(labels if len(clouds) == 3 else [""] * len(clouds), clouds))
    title = "C1 (K = 2): sampled responses before, at and after collapse"
    return f"<h3>{html.escape(title)}</h3><div class='row'>{figures}</div>"
