"""`opdkit report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page about one or more runs.

Everything is inline (PNG images as data URIs, no network): curves of loss, accuracy,
length, hedge rate, repeat ratio, top-K overlap, P_K/Q_K and entropy with the runs
overlaid and the guard's alarms and rollbacks marked; word clouds of the sampled responses
at the first, middle and last logged steps (the paper's step 0 / 700 / 1000 figure); the
probes found in each run directory (`probe_*.json`, from `opdkit probe ... --out RUN_DIR`);
and each run's resolved config. A small inline script counts the images that loaded and
writes the count to <body data-images="loaded/total"> (the headless-browser test reads it).
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from opdkit.engine.diagnostics import HEDGE_WORDS
from opdkit.engine.metrics import read_metrics, require_run

CURVES = [
    ("train/loss", "training loss"), ("rollout/accuracy", "sampled accuracy"), ("eval/accuracy", "held-out accuracy"),
    ("rollout/length_mean", "response length"), ("diag/hedge_rate", "hedge words / 1,000 words"),
    ("diag/repeat_ratio", "3-gram repeat ratio"), ("diag/overlap", "top-K overlap ratio"),
    ("diag/pk_qk_ratio", "mean P_K / mean Q_K (log; lines at 1 and 1/e)"), ("diag/student_entropy", "student entropy"),
    ("diag/teacher_entropy", "teacher entropy"), ("eval/teacher_kl", "held-out KL to teacher"),
    ("eval/rule_rate", "held-out rule rate"),
]
SELF_CHECK = ("<script>window.addEventListener('load',function(){var i=Array.prototype.slice.call(document.images);"
              "document.body.setAttribute('data-images',i.filter(function(x){return x.complete&&x.naturalWidth>0})"
              ".length+'/'+i.length);});</script>")


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _read_jsonl(path: Path) -> list[dict]:
    return read_metrics(path) if path.is_file() else []


class RunData:
    def __init__(self, run_dir: Path):
        self.dir, self.name = run_dir, run_dir.name
        require_run(run_dir)
        self.rows = read_metrics(run_dir / "metrics.jsonl")
        self.events = _read_jsonl(run_dir / "events.jsonl")
        self.samples = _read_jsonl(run_dir / "samples.jsonl")
        self.config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
        self.probes = {p.stem[len("probe_"):]: json.loads(p.read_text()) for p in sorted(run_dir.glob("probe_*.json"))}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
        return [p[0] for p in points], [p[1] for p in points]

    def marks(self) -> list[tuple[int, str]]:
        return [(e["step"], e["event"]) for e in self.events if e["event"] in ("alarm", "rollback", "guard_stop")]


def curves_figure(runs: list[RunData]) -> str | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(k, t) for k, t in CURVES if any(run.series(k)[0] for run in runs)]
    if not panels:
        return None
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.8 * rows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        for run in runs:
            x, y = run.series(key)
            ax.plot(x, y, label=run.name, marker="o" if len(x) < 8 else None)
            for step, kind in run.marks():
                ax.axvline(step, color="red" if kind != "rollback" else "orange", linestyle=":", linewidth=1)
        if key == "diag/pk_qk_ratio":
            ax.set_yscale("log")              # 1/e and 1 matter; early spikes reach the hundreds
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.axhline(0.3679, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def word_clouds(run: RunData, picks: int = 3, steps: list[int] | None = None) -> list[tuple[int, str | None]]:
    """(step, image or None when there are no words) for the first, middle and last logged sample steps,
    or for the logged sample steps nearest to the given `steps`."""
    from wordcloud import STOPWORDS, WordCloud
    stopwords = set(STOPWORDS) - set(HEDGE_WORDS)       # "but", "maybe" must stay visible
    if not run.samples:
        return []
    logged = sorted({s["step"] for s in run.samples})
    if steps:
        chosen = sorted({min(logged, key=lambda x: abs(x - want)) for want in steps})
    else:
        chosen = sorted({run.samples[0]["step"], run.samples[len(run.samples) // 2]["step"], run.samples[-1]["step"]})[:picks]
    out = []
    for step in chosen:
        text = " ".join(t for s in run.samples if s["step"] == step for t in s["texts"])
        # regexp: single characters and digits count as words (short answers, "maybe" loops alike)
        cloud = WordCloud(width=360, height=220, background_color="white", collocations=False, regexp=r"[\w']+",
                          min_word_length=1, stopwords=stopwords)
        try:
            image = cloud.generate(text).to_image()
        except ValueError:                   # only whitespace or stop-words: itself a finding
            out.append((step, None))
            continue
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append((step, "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()))
    return out


def probe_section(name: str, result: dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    counts = {"tokens", "distinct_pis"}              # bookkeeping, on another scale than the measurements
    numbers = {k: v for k, v in result.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in counts}
    body = f"<p><b>{html.escape(name)}</b>: {html.escape(str(result.get('verdict', '')))}</p>"
    if numbers:
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(numbers) + 0.8))
        ax.barh(list(numbers), list(numbers.values()))
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
        fig.tight_layout()
        body += _img(_png(fig), f"probe {name}")
    return body


def alarm_table(run: RunData) -> str:
    rows = [e for e in run.events if e["event"] in ("alarm", "rollback", "guard_stop", "skipped_nonfinite")]
    if not rows:
        return "<p>No alarms.</p>"
    cells = "".join(f"<tr><td>{e['step']}</td><td>{html.escape(e['event'])}</td><td>{html.escape(str(e.get('rule', '')))}"
                    f"</td><td>{html.escape(str(e.get('why') or e.get('changes') or ''))}</td></tr>" for e in rows)
    return f"<table><tr><th>step</th><th>event</th><th>rule</th><th>detail</th></tr>{cells}</table>"


def curves_section(run_dirs: list[str | Path], heading: str) -> str:
    """An <h3> and one curves figure for a group of runs (the lab uses one per claim)."""
    curves = curves_figure([RunData(Path(d)) for d in run_dirs])
    return f"<h3>{html.escape(heading)}</h3>" + (_img(curves, heading) if curves else "<p>no curves</p>")


def build_report(run_dirs: list[str | Path], out: str | Path, title: str | None = None, preamble: str = "",
                 overlay: bool = True) -> Path:
    """The page for `run_dirs`; `preamble` (HTML) goes between the title and the curves.

    overlay=False leaves out the all-runs curves figure (callers that group curves themselves).
    """
    runs = [RunData(Path(d)) for d in run_dirs]
    parts = [f"<h1>{html.escape(title or 'opdkit report: ' + ', '.join(r.name for r in runs))}</h1>", preamble]
    curves = curves_figure(runs) if overlay else None
    if curves:
        parts.append("<h2>Curves</h2><p>Dotted lines: guard alarms (red) and rollbacks (orange).</p>" + _img(curves, "curves"))
    for run in runs:
        parts.append(f"<h2>{html.escape(run.name)}</h2><h3>Guard</h3>{alarm_table(run)}")
        clouds = word_clouds(run)
        if clouds:
            parts.append("<h3>Sampled responses</h3><div class='row'>" + "".join(
                f"<figure>{_img(uri, f'words at step {step}')}<figcaption>step {step}</figcaption></figure>"
                if uri else f"<figure><p>no words: the responses were whitespace or stop-words</p>"
                            f"<figcaption>step {step}</figcaption></figure>"
                for step, uri in clouds) + "</div>")
        if run.probes:
            parts.append("<h3>Probes</h3>" + "".join(probe_section(n, r) for n, r in run.probes.items()))
        if run.config:
            parts.append(f"<h3>Config</h3><details><summary>config.yaml</summary><pre>{html.escape(run.config)}</pre></details>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}img{max-width:100%}"
             ".row{display:flex;gap:1em;flex-wrap:wrap}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 6px;font-size:13px}pre{font-size:12px;background:#f6f6f6;padding:8px}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>opdkit report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}{SELF_CHECK}</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
