"""`opdkit lab reproduce [--quick] [--only C1,C4] --out DIR`: the claims table, claims.json, report.html.

C12 (frozen / live / EMA self-teacher) runs after the paper's eleven.
Quick mode: one seed and shorter runs, so each statistic is a point: it shows where a claim
lands, not whether that is more than seed noise. Full mode: five seeds, each statistic's mean
and 95% interval, and a verdict only when the interval clears the threshold (`verdict.py`).
The testbed models are cached under DIR/cache, so a second run skips their training.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

from opdkit.analysis.report import build_report, curves_section
from opdkit.lab.claim import Claim, Context
from opdkit.lab.claims import CLAIMS, FULL_SEEDS
from opdkit.lab.figures import collapse_clouds, prefix_bars, self_teacher_bars

VERDICT_COLOURS = {"reproduced": "#1a7f37", "not reproduced": "#cf222e", "inconclusive": "#9a6700", "not run": "#6e7781"}


def select(only: str | None) -> list[Claim]:
    if not only:
        return CLAIMS
    wanted = [c.strip().upper() for c in only.split(",") if c.strip()]
    known = {c.id for c in CLAIMS}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"unknown claims {unknown}; known: {', '.join(sorted(known, key=lambda c: int(c[1:])))}")
    return [c for c in CLAIMS if c.id in wanted]


def reproduce(out: str | Path, quick: bool = True, only: str | None = None, seeds: int | None = None) -> list[dict]:
    from tqdm import tqdm
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, quick)
    claims = select(only)
    seed_list = list(range(seeds or (1 if quick else FULL_SEEDS)))
    jobs = [(c, s) for c in claims if c.run is not None for s in seed_list]
    results: dict[str, list[dict]] = {c.id: [] for c in claims}
    started = time.time()
    with tqdm(total=len(jobs), desc="lab reproduce", unit="run", dynamic_ncols=True) as bar:
        for claim, seed in jobs:
            bar.set_postfix_str(f"{claim.id} seed {seed}")
            results[claim.id].append(claim.run(ctx, seed))
            bar.update(1)
    rows = [row_for(c, results[c.id], len(seed_list)) for c in claims]
    (out / "claims.json").write_text(json.dumps({"mode": "quick" if quick else "full", "seeds": seed_list,
                                                 "wall_s": round(time.time() - started, 1), "claims": rows,
                                                 "raw": results}, indent=2, default=str))
    write_report(out, rows, claims, seed_list, results)
    return rows


def row_for(claim: Claim, results: list[dict], seeds: int) -> dict:
    if claim.run is None:
        verdict, measured = "not run", f"not implemented in the miniature yet: {claim.hypothesis}"
    else:
        verdict, measured = claim.judge(results)
    return {"claim": claim.id, "title": claim.title, "paper": claim.paper, "hypothesis": claim.hypothesis,
            "threshold": claim.threshold, "measured": measured, "verdict": verdict, "seeds": seeds if claim.run else 0}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'claim':<5} {'verdict':<15} {'title'}", "-" * 100]
    if rows and rows[0]["seeds"] == 1:
        lines.insert(0, "quick mode, 1 seed: each statistic is a point; the full mode's 95% intervals decide.")
    for r in rows:
        lines.append(f"{r['claim']:<5} {r['verdict']:<15} {r['title']}")
        if r["verdict"] != "not run":
            lines.append(f"{'':<21} measured: {r['measured']}")
    return "\n".join(lines)


def claims_html(rows: list[dict]) -> str:
    head = ("<tr><th>claim</th><th>paper</th><th>hypothesis (miniature)</th><th>threshold</th><th>measured</th>"
            "<th>verdict</th></tr>")
    body = "".join(
        f"<tr><td><b>{r['claim']}</b> {html.escape(r['title'])}</td><td>{html.escape(r['paper'])}</td>"
        f"<td>{html.escape(r['hypothesis'])}</td><td>{html.escape(r['threshold'])}</td><td>{html.escape(r['measured'])}</td>"
        f"<td style='color:{VERDICT_COLOURS[r['verdict']]}'><b>{r['verdict']}</b></td></tr>" for r in rows)
    return f"<h2>Claims</h2><table>{head}{body}</table>"


def write_report(out: Path, rows: list[dict], claims: list[Claim], seeds: list[int],
                 results: dict[str, list[dict]] | None = None) -> Path:
    """Claims table, the probe bars, one curves figure per claim (its runs, first seed), per-run sections."""
    results = results or {}
    c1 = results.get("C1") or [{}]
    bars = (collapse_clouds(out / "runs" / f"C1-unnorm-K2-seed{seeds[0]}", c1[0].get("K2"))
            + prefix_bars(results.get("C4", [])) + self_teacher_bars(results.get("C12", [])))
    groups = []
    for claim in claims:
        dirs = [out / "runs" / f"{name}-seed{seeds[0]}" for name in claim.figures]
        dirs = [d for d in dirs if (d / "metrics.jsonl").is_file()]
        if dirs:
            groups.append((claim, dirs))
    figures = "<h2>Curves by claim</h2><p>Seed {}.</p>".format(seeds[0]) + "".join(
        curves_section(dirs, f"{claim.id}: {claim.title}") for claim, dirs in groups)
    run_dirs = [d for _, dirs in groups for d in dirs]
    return build_report(run_dirs, out / "report.html", title="opdkit lab: the paper's claims in miniature",
                        preamble=claims_html(rows) + bars + (figures if groups else ""), overlay=False)
