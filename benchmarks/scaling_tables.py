"""Markdown tables of benchmarks/scaling_vs_trl.py's results.json (computed from its rows, nothing typed in).

    python benchmarks/scaling_tables.py benchmarks/out/scaling/results.json

Tables: every point and arm with ratios to TRL fp32 at that point; like with like (opdkit fp32 vs
TRL fp32, opdkit's bf16 options vs TRL bf16) at the point that has TRL bf16; issue 19's targets with
the measured value and the margin; how peak RSS grows with the response length on each side.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

BASE = "trl_fp32"
TARGETS = {"default": (1.5, 0.75), "best": (2.0, 0.6)}   # (min x TRL tok/s, max x TRL peak RSS)
FLOOR_TARGET, LONG_RSS_TARGET = 1.3, 0.5


def medians(report: dict) -> dict[tuple[str, str], dict]:
    """(point, arm) -> median tok/s, step s and peak RSS over the arm's ok repeats, with its statuses."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in report["rows"]:
        groups.setdefault((row["point"], row["arm"]), []).append(row)
    out = {}
    for key, rows in groups.items():
        ok = [r for r in rows if r["status"] == "ok"]
        m = {"statuses": [r["status"] for r in rows], "n_ok": len(ok), "length": rows[0]["length"],
             "batch": rows[0]["batch"], "pair": rows[0]["pair"],
             "load": (min(r["load_before"] for r in rows), max(r["load_after"] for r in rows)),
             "max_rss_seen": max(r["process_peak_rss_mib"] for r in rows)}
        for field in ("tokens_per_s_step", "median_step_wall_s", "process_peak_rss_mib"):
            m[field] = statistics.median(r[field] for r in ok) if ok else None
        out[key] = m
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def per_repeat(report: dict, point: str, arm: str, base: str = BASE) -> str:
    """x base tok/s within each repeat (the two arms ran minutes apart, under about the same load)."""
    rows = {(r["arm"], r["repeat"]): r for r in report["rows"] if r["point"] == point and r["status"] == "ok"}
    out = [f"{rows[(arm, k)]['tokens_per_s_step'] / rows[(base, k)]['tokens_per_s_step']:.2f}"
           for (a, k) in sorted(rows) if a == arm and (base, k) in rows]
    return " / ".join(out) if len(out) > 1 else ""


def scaling_table(report: dict, meds: dict) -> str:
    lines = ["| point | arm | runs ok | median step s | tok/s | x TRL fp32 tok/s (per repeat) | peak RSS MiB | x TRL fp32 RSS | "
             "load (1-min avg) |", "|---|---|---|---|---|---|---|---|---|"]
    for (point, arm), m in meds.items():
        base = meds.get((point, BASE), {})
        rss = m["process_peak_rss_mib"]
        status = f"{m['n_ok']}/{len(m['statuses'])}" + ("" if m["n_ok"] == len(m["statuses"]) else
                                                         f" ({', '.join(s for s in m['statuses'] if s != 'ok')})")
        rss_text = fmt(rss, ".0f") if rss is not None else f"> {m['max_rss_seen']:.0f} (killed)"
        lines.append(f"| {point} | {arm} | {status} | {fmt(m['median_step_wall_s'])} | {fmt(m['tokens_per_s_step'], '.1f')} | "
                     f"{fmt(ratio(m['tokens_per_s_step'], base.get('tokens_per_s_step')))}"
                     f"{' (' + per_repeat(report, point, arm) + ')' if per_repeat(report, point, arm) else ''} | {rss_text} | "
                     f"{fmt(ratio(rss, base.get('process_peak_rss_mib')))} | {m['load'][0]:.1f}-{m['load'][1]:.1f} |")
    return "\n".join(lines)


def like_for_like(report: dict, meds: dict) -> str:
    point = next((p for (p, a) in meds if a == "trl_bf16"), None)
    if point is None:
        return "(no point with TRL bf16 in this run)"
    pairs = [("opdkit_default", "trl_fp32", "fp32 vs fp32"),
             ("opdkit_lean_bf16_teacher", "trl_bf16", "opdkit bf16 sampler + bf16 teacher (fp32 training) vs TRL bf16"),
             ("opdkit_bf16", "trl_bf16", "opdkit all bf16 (weights, grads, AdamW state) vs TRL bf16 autocast"),
             ("trl_bf16", "trl_fp32", "TRL's own bf16 vs fp32")]
    lines = [f"At {point}:", "", "| comparison | x tok/s of medians (per repeat) | x peak RSS |", "|---|---|---|"]
    for arm, base, text in pairs:
        a, b = meds.get((point, arm)), meds.get((point, base))
        if a and b:
            each = per_repeat(report, point, arm, base)
            lines.append(f"| {text} ({arm} / {base}) | {fmt(ratio(a['tokens_per_s_step'], b['tokens_per_s_step']))}"
                         f"{' (' + each + ')' if each else ''} | "
                         f"{fmt(ratio(a['process_peak_rss_mib'], b['process_peak_rss_mib']))} |")
    return "\n".join(lines)


def target_rows(report: dict, meds: dict) -> list[str]:
    rows = []
    short = next((p for (p, a) in meds if a == BASE and meds[(p, a)]["pair"] in ("smol", "tiny")), None)
    if short:
        base = meds[(short, BASE)]
        arms = {a: m for (p, a), m in meds.items() if p == short and a.startswith("opdkit") and m["n_ok"]}
        best = max(arms, key=lambda a: arms[a]["tokens_per_s_step"], default=None)
        for label, arm in (("default", "opdkit_default"), ("best", best)):
            if arm in arms:
                speed, memory = (ratio(arms[arm]["tokens_per_s_step"], base["tokens_per_s_step"]),
                                 ratio(arms[arm]["process_peak_rss_mib"], base["process_peak_rss_mib"]))
                want_speed, want_rss = TARGETS[label]
                met = speed is not None and memory is not None and speed >= want_speed and memory <= want_rss
                rows.append(f"| {label} settings ({arm}, {short}): >= {want_speed}x TRL tok/s at <= {want_rss}x RSS | "
                            f"{fmt(speed)}x at {fmt(memory)}x | {'met' if met else 'missed'}: tok/s "
                            f"{fmt(ratio(speed, want_speed))} of target, RSS {fmt(ratio(memory, want_rss))} of the cap |")
    floor = report.get("floor", {})
    if floor.get("status") == "ok":
        x = floor["chunked_rkl"]["median_s"] / floor["four_gemm_floor_s"]
        rows.append(f"| chunked RKL <= {FLOOR_TARGET}x the four-matmul floor (N 4096, H 576, V 49152) | "
                    f"{floor['chunked_rkl']['median_s']:.2f} s / {floor['four_gemm_floor_s']:.2f} s = {x:.2f}x | "
                    f"{'met' if x <= FLOOR_TARGET else f'missed by {x / FLOOR_TARGET:.2f}x'} |")
    longest = max((m["length"] for (p, a), m in meds.items() if a == BASE), default=None)
    for (p, a), m in meds.items():
        if a == "opdkit_default" and m["length"] == longest and (p, BASE) in meds:
            base = meds[(p, BASE)]
            base_rss = base["process_peak_rss_mib"] or base["max_rss_seen"]    # killed: its true peak is higher
            x = ratio(m["process_peak_rss_mib"], base_rss)
            bound = "" if base["process_peak_rss_mib"] else "<= "
            rows.append(f"| at {longest}-token responses ({p}) opdkit peak RSS <= {LONG_RSS_TARGET}x TRL's | {bound}{fmt(x)}x | "
                        f"{'-' if x is None else 'met' if x <= LONG_RSS_TARGET else f'missed by {x / LONG_RSS_TARGET:.2f}x'} |")
    return rows


def growth(meds: dict) -> str:
    """Peak RSS against response length per arm and pair (batch noted): the slope between the two longest."""
    lines = ["| pair | arm | length (batch): peak RSS MiB | MiB per extra 1k tokens in a step (last two points) |",
             "|---|---|---|---|"]
    series: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    for (p, a), m in meds.items():
        if m["process_peak_rss_mib"] is not None:
            series.setdefault((m["pair"], a), []).append((m["length"], m["batch"], m["process_peak_rss_mib"]))
    for (pair, arm), pts in sorted(series.items()):
        pts.sort()
        slope = "-"
        if len(pts) > 1:
            (l0, b0, r0), (l1, b1, r1) = pts[-2], pts[-1]
            slope = f"{(r1 - r0) / (l1 * b1 - l0 * b0) * 1000:.0f}" if l1 * b1 != l0 * b0 else "-"
        lines.append(f"| {pair} | {arm} | {', '.join(f'{l} ({b}): {r:.0f}' for l, b, r in pts)} | {slope} |")
    return "\n".join(lines)


def phases(row: dict) -> tuple[float, float, float] | None:
    """(generate, forward + loss, backward) seconds of one run, each side's own split."""
    if "phases_median_s" in row:
        ph = row["phases_median_s"]
        return ph.get("rollout", 0.0), ph.get("teacher", 0.0) + ph.get("student_forward", 0.0), ph.get("backward", 0.0)
    if "median_hf_generate_s" in row:
        return row["median_hf_generate_s"], row["median_fwd_loss_s"], row["median_backward_s"]
    return None


def phase_table(report: dict) -> str:
    groups: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for row in report["rows"]:
        split = phases(row) if row["status"] == "ok" else None
        if split:
            groups.setdefault((row["point"], row["arm"]), []).append(split)
    lines = ["| point | arm | generate s | forward + loss s | backward s |", "|---|---|---|---|---|"]
    for (point, arm), splits in groups.items():
        cols = [statistics.median(s[i] for s in splits) for i in range(3)]
        lines.append(f"| {point} | {arm} | " + " | ".join(f"{c:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def render_all(report: dict) -> str:
    meds = medians(report) if report.get("rows") else {}
    m = report["machine"]
    head = (f"CPU {m['cpu']} ({m['cores']} cores; {' '.join(m['isa']) or 'no AVX-512/AMX'}), torch {m['torch']}, "
            f"{report['threads']} thread(s) per arm, plan {report['plan']}, started {report['started_utc']} UTC"
            f"{', finished ' + report['finished_utc'] + ' UTC' if 'finished_utc' in report else ' (unfinished)'}.")
    targets = ["| target | measured | verdict |", "|---|---|---|", *target_rows(report, meds)]
    where = "### Where the step goes (medians; opdkit: rollout, teacher + student forward, backward; TRL: the anchor's split)"
    return "\n\n".join([head, "### Every arm", scaling_table(report, meds), where, phase_table(report) if meds else "",
                        "### Like with like", like_for_like(report, meds),
                        "### Targets (issue 19)", "\n".join(targets), "### Peak RSS against response length",
                        growth(meds)]) + "\n"


if __name__ == "__main__":
    print(render_all(json.loads(Path(sys.argv[1]).read_text())))
