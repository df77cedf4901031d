"""GPU evidence in one command: opdkit on one H200 in about 8 minutes (issue 20).

    bash scripts/gpu_check.sh --out $OUT/gpu                 # on the GPU machine (see BENCHMARKS.md)
    python benchmarks/gpu_check.py --dry-run --out DIR       # the same code on the CPU at tiny sizes

Sections, each a fresh process with its own time budget (the JSON and the markdown table
are rewritten after every section, so a timeout keeps everything measured before it):
  env         machine, packages, the memory plan and the pair chosen (Qwen3-8B -> Qwen3-1.7B if it fits)
  opdkit      opdkit's training step: time by phase, tokens/s, peak CUDA memory (benchmarks/gpu_step.py)
  trl         TRL DistillationTrainer, same models, batch and response length (needs trl; skipped otherwise)
  objectives  chunked RKL / JSD / top-K tail at N = 8k..64k vs TRL's loss and Liger's JSD (gpu_objectives.py)
  gpu_tests   `python -m pytest -m gpu`
  fsdp        FSDP2 at world size 1 through torchrun (NCCL) against the plain run (gpu_fsdp.py)
Then `python -m opdkit.scaling`'s model beside the measurements, gaps > 20% flagged.
Outputs in --out: results.json, results.md, gpu_check.log (three files). Work files
(model configs, per-section JSON, run directories) go to --work. No network is used.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
BUDGET_S = {"opdkit": 130, "trl": 130, "objectives": 100, "gpu_tests": 40, "fsdp": 80}    # + env: ~8 min in all
DRY_BUDGET_S = {name: 90 for name in BUDGET_S}
SECTIONS = ["env", *BUDGET_S]
NOT_RUN = {"vllm sampler and served teacher": "not run: vllm cannot be installed on the GPU machine; "
                                              "covered by CPU tests (tests/test_vllm_sampler.py, tests/test_served.py)"}


def env_section(dry: bool, work: Path) -> dict:
    """Machine, packages, memory plan; writes the model directories the other sections read."""
    import importlib.util
    import platform

    import torch
    import transformers
    from gpu_shapes import (
        PAIRS,
        QWEN3_0_6B,
        QWEN3_1_7B,
        TINY_STUDENT,
        TINY_TEACHER,
        build_tokenizer,
        choose_pair,
        plan_memory,
        write_model_dir,
    )
    from gpu_step import DRY, GPU
    setting = DRY if dry else GPU
    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "packages": {m: importlib.util.find_spec(m) is not None for m in ("trl", "datasets", "liger_kernel", "vllm")},
            "cuda": torch.cuda.is_available(), "dry_run": dry, "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    prompt = setting["prompt_words"] + 6                         # + the chat template's tokens
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        info.update(gpu=torch.cuda.get_device_name(), gpu_total_gib=total / 2**30, gpu_free_gib=free / 2**30)
        chosen = choose_pair(free / 2**30, setting["batch"], prompt, setting["response"])
        if chosen is None:
            raise SystemExit("gpu_check: error: not even the smallest pair fits in free GPU memory")
        teacher, student, plan = chosen
        info["pairs_considered"] = {
            f"{t.name}->{s.name}": plan_memory(t, s, setting["batch"], prompt, setting["response"])["total"] for t, s in PAIRS}
    else:
        teacher, student = TINY_TEACHER, TINY_STUDENT
        plan = plan_memory(teacher, student, setting["batch"], prompt, setting["response"])
    tokenizer = build_tokenizer(student.vocab)
    # The FSDP2 check is about correctness, not size: fp32 and a smaller pair on the GPU.
    small = (TINY_TEACHER, TINY_STUDENT) if dry else (QWEN3_1_7B, QWEN3_0_6B)
    for folder, pair in (("models", (teacher, student)), ("models_fsdp", small)):
        for role, arch in zip(("teacher", "student"), pair):
            write_model_dir(work / folder / role, arch, tokenizer)
    info.update(teacher=vars(teacher), student=vars(student), setting=setting, memory_plan_gib=plan)
    return info


def run_section(name: str, dry: bool, work: Path, log, budget_scale: float = 1.0) -> dict:
    """Run one measuring section in a fresh process under its time budget; its JSON (partial on timeout)."""
    models, fsdp_models, out = work / "models", work / "models_fsdp", work / f"{name}.json"
    flag = ["--dry-run"] if dry else []
    py = sys.executable
    commands = {
        "opdkit": [[py, str(HERE / "gpu_step.py"), "opdkit", "--models", str(models), "--out", str(out), *flag]],
        "trl": [[py, str(HERE / "gpu_step.py"), "trl", "--models", str(models), "--out", str(out), *flag]],
        "objectives": [[py, str(HERE / "gpu_objectives.py"), "--out", str(out), *flag]],
        "gpu_tests": [[py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *gpu_test_files()]],
        "fsdp": [[py, str(HERE / "gpu_fsdp.py"), "--models", str(fsdp_models), "--out", str(work / "plain.json"), *flag],
                 [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", str(HERE / "gpu_fsdp.py"),
                  "--models", str(fsdp_models), "--out", str(work / "fsdp.json"), "--fsdp", *flag]],
    }
    if name == "trl" and not all(_has(m) for m in ("trl", "datasets")):
        return {"status": "not run: trl (and datasets) are not installed; bring the wheels (BENCHMARKS.md)"}
    budget = round((DRY_BUDGET_S if dry else BUDGET_S)[name] * budget_scale, 1)
    t0, status, tail = time.perf_counter(), "ok", ""
    for command in commands[name]:
        left = budget - (time.perf_counter() - t0)
        log.write(f"\n==== {name}: {' '.join(command)}\n")
        log.flush()
        returncode, output = run_in_group(command, max(1.0, left))
        log.write(output)
        tail = output.strip().splitlines()[-1] if output.strip() else ""
        if returncode is None:
            status = f"timed out after its {budget} s budget; figures written before the timeout are kept"
            break
        if returncode != 0:
            status = f"failed (exit {returncode}): {tail[:300]}"
            break
    result = {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
    if name == "gpu_tests":
        result["pytest"] = tail
    if name == "fsdp":
        result.update(fsdp_comparison(work))
    elif out.is_file():
        result["result"] = json.loads(out.read_text())
    return result


def run_in_group(command: list[str], timeout: float) -> tuple[int | None, str]:
    """(exit code or None on timeout, output). On timeout the whole process group is killed,
    so torchrun's workers cannot outlive their section and keep holding GPU memory."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output


def gpu_test_files() -> list[str]:
    """The test files holding `gpu`-marked tests (collecting the whole suite costs ~20 s of imports)."""
    return sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in f.read_text())


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def fsdp_comparison(work: Path) -> dict:
    """Max relative difference of the loss and gradient-norm trajectories, FSDP2 vs plain."""
    files = [work / "plain.json", work / "fsdp.json"]
    if not all(f.is_file() for f in files):
        return {}
    plain, fsdp = (json.loads(f.read_text()) for f in files)
    diff = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for a, b in zip(plain["rows"], fsdp["rows"])
               for k in ("loss", "grad_norm"))
    return {"plain": plain, "fsdp": fsdp, "max_rel_diff": diff, "equal_within_1e-4": diff <= 1e-4 and
            len(plain["rows"]) == len(fsdp["rows"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu")
    p.add_argument("--work", type=Path, default=None, help="work files (default: <out>/../gpu_work)")
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU at tiny sizes (CI)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every section's time budget (less device time left: < 1)")
    a = p.parse_args()
    chosen = a.sections.split(",")
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"gpu_check: error: unknown sections {unknown}; choose from {SECTIONS}")
    a.out = a.out.resolve()
    work = (a.work or a.out.parent / (a.out.name + "_work")).resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    from gpu_report import scaling_rows, write_reports
    report = {"sections": {}, "not_run": dict(NOT_RUN)}
    with open(a.out / "gpu_check.log", "w") as log:
        report["env"] = env_section(a.dry_run, work)        # always: the other sections read its model dirs
        write_reports(report, a.out)
        for name in chosen:
            if name == "env":
                continue
            print(f"[gpu_check] {name} ...", flush=True)
            report["sections"][name] = run_section(name, a.dry_run, work, log, a.budget_scale)
            report["scaling"] = scaling_rows(report)
            write_reports(report, a.out)
            print(f"[gpu_check] {name}: {report['sections'][name]['status']} "
                  f"({report['sections'][name].get('seconds', 0)} s)", flush=True)
    print((a.out / "results.md").read_text())


if __name__ == "__main__":
    main()
