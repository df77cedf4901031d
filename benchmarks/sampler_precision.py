"""Does a bf16 rollout copy change what OPD learns? Held-out KL curves and the sampler gap (issue 19 item 2).

    python benchmarks/sampler_precision.py [--model /work/models/smollm2-fp32] [--seeds 0,1] [--steps 12]

Arms (one `opdkit distill` process each, run one after another in the order fp32 s0, bf16 s0,
fp32 s1, bf16 s1, ...): `rollout.sampler_dtype=''` (the student samples) against `bfloat16` (its
copy samples), everything else equal: SmolLM2-135M-Instruct teacher (bf16 scoring, both arms),
the student = its layers 0, 3, ..., 27, the default objective, arithmetic word problems,
4 prompts x 32 tokens per step, lr 5e-5, held-out evaluation every `--eval-every` steps on 12
prompts (`eval/teacher_kl`: token-mean KL(student || teacher) of fp32 student samples, seeded,
so it measures the trained weights, not the sampler). Noise is the spread between seeds of the
same arm; the effect is the difference between arms at the same seed. Per step the bf16 arm
logs `diag/sampler_gap` = mean over sampled tokens of log mu(y) - log pi(y), whose expectation
under mu is KL(copy || trainer) per token.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "arith_words"


def arm_command(model: Path, out: Path, sampler: str, seed: int, steps: int, eval_every: int) -> list[str]:
    code = "from opdkit.cli import main; main()"
    return [sys.executable, "-c", code, "distill", f"model.student={model}", f"model.teacher={model}",
            "model.drop_layers_every=3", "model.teacher_dtype=bfloat16", f"data.train={DATA / 'train.jsonl'}",
            f"data.eval={DATA / 'heldout.jsonl'}", "rollout.max_new_tokens=32", f"rollout.sampler_dtype={sampler}",
            f"optim.steps={steps}", "optim.prompts_per_step=4", "optim.micro_batch=12", "optim.lr=5e-5",
            f"run.out={out}", f"run.seed={seed}", f"run.eval_every={eval_every}", "run.eval_limit=12",
            f"run.save_every={10 * steps}", "run.threads=1", "run.progress=false", "guard.enabled=false"]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summary(runs: dict[str, Path]) -> str:
    """Markdown: held-out KL per eval step per arm, and the bf16 arms' sampler gap."""
    curves, gaps = {}, {}
    for name, out in runs.items():
        rows = read_rows(out / "metrics.jsonl")
        curves[name] = {r["step"]: r["eval/teacher_kl"] for r in rows if "eval/teacher_kl" in r}
        gaps[name] = [r["diag/sampler_gap"] for r in rows if "diag/sampler_gap" in r]
    steps = sorted({s for c in curves.values() for s in c})
    lines = ["| arm | " + " | ".join(f"KL @ step {s}" for s in steps) + " | sampler gap per step: mean (min, max) |",
             "|---|" + "---|" * (len(steps) + 1)]
    for name, curve in curves.items():
        g = gaps[name]
        gap = f"{sum(g) / len(g):.2e} ({min(g):.1e}, {max(g):.1e})" if g else "-"
        lines.append(f"| {name} | " + " | ".join(f"{curve.get(s, float('nan')):.4f}" for s in steps) + f" | {gap} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("/work/models/smollm2-fp32"))
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "sampler_precision")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--summary-only", action="store_true", help="print the table of runs already under --out")
    a = p.parse_args()
    if not (a.model / "config.json").is_file():
        print(f"sampler_precision: error: no model at {a.model}; pass --model", file=sys.stderr)
        raise SystemExit(2)
    runs = {}
    for seed in [int(s) for s in a.seeds.split(",")]:
        for label, sampler in (("fp32", ""), ("bf16", "bfloat16")):
            out = a.out / f"{label}_s{seed}"
            runs[f"{label} sampler, seed {seed}"] = out
            if a.summary_only or (out / "metrics.jsonl").exists():
                continue
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            t0, load = time.time(), open("/proc/loadavg").read().split()[0]
            with open(a.out.parent / f"{a.out.name}_{label}_s{seed}.log", "w") as log:
                a.out.mkdir(parents=True, exist_ok=True)
                rc = subprocess.call(arm_command(a.model, out, sampler, seed, a.steps, a.eval_every), stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            print(f"{label} s{seed}: rc {rc}, {time.time() - t0:.0f} s, load average {load} -> "
                  f"{open('/proc/loadavg').read().split()[0]}", flush=True)
    print(summary(runs))


if __name__ == "__main__":
    main()
