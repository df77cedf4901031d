"""results.json and results.md of benchmarks/gpu_check.py, and the scaling model beside the measurements.

`scaling_rows` evaluates `opdkit.scale.scaling` (docs/scaling.md: H100 peaks, 40% MFU, decoding
bound by HBM bandwidth, 16 B/param student state) for the pair, batch and lengths that
gpu_check ran on one GPU, and puts each prediction beside the measured figure; a gap over
20% is flagged. The model's known differences from this run are stated next to its rows.
"""
from __future__ import annotations

import json
from pathlib import Path

GB_PER_GIB = 2 ** 30 / 1e9


def scaling_rows(report: dict) -> list[dict]:
    from opdkit.scale.scaling import Arch, Plan, memory, step_time
    env, opd = report.get("env", {}), report.get("sections", {}).get("opdkit", {}).get("result")
    if not opd or "teacher" not in env:
        return []
    teacher, student, setting = Arch(**env["teacher"]), Arch(**env["student"]), env["setting"]
    context = setting["prompt_words"] + 6 + setting["response"]
    plan = Plan(gpus=1, tokens_per_gpu=setting["batch"] * context, context=context, decode_batch=setting["batch"])
    times = step_time(teacher, student, plan, setting["batch"] * setting["response"])
    mem = memory(teacher, student, plan)
    phases = opd["phases_median_s"]
    model_gb = sum(mem[k] for k in mem if k.startswith(("teacher weights bf16, replicated", "student fp32 master",
                                                        "activations without", "final hidden", "logits per chunk",
                                                        "rollout KV cache for")))
    rows = [
        ("rollout s (model: HBM-bound decode)", times["rollout s"], phases.get("rollout")),
        ("teacher scoring s (model: 2N FLOPs at 40% of 989 TFLOP/s)", times["teacher s (at mfu)"], phases.get("teacher")),
        ("student forward + backward s (model: 8N incl. a recompute opdkit does not do)", times["train s (at mfu)"],
         (phases.get("student_forward") or 0) + (phases.get("backward") or 0)),
        ("peak memory GB (model: 16 B/param student state; opdkit bf16 keeps 8)", model_gb,
         None if opd.get("peak_cuda_gib") is None else opd["peak_cuda_gib"] * GB_PER_GIB),
        ("peak memory GB (gpu_shapes.plan_memory, opdkit's bf16 state)", env["memory_plan_gib"]["total"] * GB_PER_GIB,
         None if opd.get("peak_cuda_gib") is None else opd["peak_cuda_gib"] * GB_PER_GIB),
    ]
    out = []
    for name, predicted, measured in rows:
        ratio = None if not measured or not predicted else measured / predicted
        out.append({"quantity": name, "model": predicted, "measured": measured, "measured_over_model": ratio,
                    "gap_over_20pct": ratio is not None and abs(ratio - 1) > 0.2})
    return out


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def step_table(sections: dict) -> list[str]:
    arms = {k: sections[k]["result"] for k in ("opdkit", "trl") if sections.get(k, {}).get("result")}
    if not arms:
        return []
    lines = ["| arm | median step s | tokens/step | tokens/s | peak CUDA GiB | phases (median s) |", "|---|---|---|---|---|---|"]
    for name, r in arms.items():
        phases = ", ".join(f"{k} {v:.3g}" for k, v in r["phases_median_s"].items())
        lines.append(f"| {name} | {r['median_step_s']:.3g} | {_f(r['tokens_per_step'][-1] if r['tokens_per_step'] else None)} | "
                     f"{r['tokens_per_s']:.4g} | {_f(r['peak_cuda_gib'])} | {phases} |")
    if len(arms) == 2:
        o, t = arms["opdkit"], arms["trl"]
        lines.append(f"\nopdkit / TRL: {o['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s" +
                     (f", {o['peak_cuda_gib'] / t['peak_cuda_gib']:.2f}x peak memory" if o["peak_cuda_gib"] else ""))
    return lines


def objective_table(section: dict) -> list[str]:
    r = section.get("result")
    if not r:
        return []
    lines = ["| N | arm | median s | peak GiB over inputs | max grad diff vs TRL (rel) | note |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        diff = next((v for k, v in row.items() if k.startswith("max_grad_diff")), None)
        lines.append(f"| {row['n']} | {row['name']} | {_f(row.get('median_s'))} | {_f(row.get('peak_over_inputs_gib'))} | "
                     f"{'-' if diff is None else f'{diff:.1e}'} | {row.get('error', '')} |")
    lines += [f"\n{name}: {why}" for name, why in r.get("skipped", {}).items()]
    return lines


def markdown(report: dict) -> str:
    env, sections = report.get("env", {}), report.get("sections", {})
    label = ("**CPU dry run, not GPU figures**: tiny models, the same code." if env.get("dry_run")
             else f"GPU run: {env.get('gpu', '?')}.")
    lines = [f"# gpu_check ({env.get('date_utc', '')})", "", label,
             f"torch {env.get('torch')}, transformers {env.get('transformers')}, packages {env.get('packages')}",
             f"pair: {env.get('teacher', {}).get('name')} -> {env.get('student', {}).get('name')}, setting {env.get('setting')}, "
             f"planned memory {_f(env.get('memory_plan_gib', {}).get('total'))} GiB", "",
             "| section | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v.get('seconds', '-')} |" for k, v in sections.items()]
    lines += [f"| {k} | {v} | - |" for k, v in report.get("not_run", {}).items()]
    lines += ["", *step_table(sections), "", *objective_table(sections.get("objectives", {}))]
    fsdp = sections.get("fsdp", {})
    if "max_rel_diff" in fsdp:
        lines += ["", f"FSDP2 (world size 1, torchrun, {fsdp['fsdp'].get('backend')}, {fsdp['fsdp'].get('fsdp_modules')} "
                      f"FSDP modules) vs plain: max relative loss/grad-norm difference {fsdp['max_rel_diff']:.1e} "
                      f"({'equal' if fsdp['equal_within_1e-4'] else 'NOT equal'} within 1e-4)"]
    if "gpu_tests" in sections:
        lines += ["", f"`pytest -m gpu`: {sections['gpu_tests'].get('pytest', '')}"]
    if report.get("scaling"):
        lines += ["", "Scaling model (`python -m opdkit.scaling`, H100 peaks) beside the measurement:", "",
                  "| quantity | model | measured | measured / model | gap > 20% |", "|---|---|---|---|---|"]
        lines += [f"| {r['quantity']} | {_f(r['model'])} | {_f(r['measured'])} | {_f(r['measured_over_model'])} | "
                  f"{'**yes**' if r['gap_over_20pct'] else 'no'} |" for r in report["scaling"]]
        if env.get("dry_run"):
            lines.append("\n(dry run: CPU times against GPU peaks; the gaps say nothing here)")
    return "\n".join(lines) + "\n"


def write_reports(report: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "results.md").write_text(markdown(report))
