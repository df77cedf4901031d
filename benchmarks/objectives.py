"""Objective forward+backward at SmolLM2's sizes: opdkit chunked vs plain logits vs TRL.

One run, side by side, every configuration in a fresh process (peak memory = ru_maxrss of
that process minus its RSS just before the inputs exist, the protocol of
../shared/anchors/bench_loss.py). N = 4096 positions, H = 576, V = 49152, fp32, CPU.
Logits are projected inside the timed region (hidden @ W^T), as in the anchor.

    python benchmarks/objectives.py                 # all configurations (~10 min on 2 cores)
    python benchmarks/objectives.py --only rkl      # configurations whose name contains 'rkl'

"low-memory" configurations run with 100-row chunks and MALLOC_MMAP_THRESHOLD_=1048576, so
glibc returns every buffer of 1 MiB or more to the OS on free (see BENCHMARKS.md).

Prints a markdown table with ratios and writes benchmarks/out/objectives.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

N, H, V = 4096, 576, 49152
OUT = Path(__file__).parent / "out"

# name -> (implementation, objective, options[, chunk rows, environment])
LOW_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}   # glibc: mmap every buffer >= 1 MiB
CONFIGS = {
    "trl_gkd rkl (beta=1)": ("trl", "jsd", {"beta": 1.0}),
    "trl_gkd jsd (beta=0.5)": ("trl", "jsd", {"beta": 0.5}),
    "plain rkl": ("plain", "rkl", {}),
    "plain jsd (beta=0.5)": ("plain", "jsd", {"beta": 0.5}),
    "plain topk_rkl_sg (K=20)": ("plain", "topk_rkl_sg", {"k": 20}),
    "chunked rkl": ("chunked", "rkl", {}),
    "chunked jsd (beta=0.5)": ("chunked", "jsd", {"beta": 0.5}),
    "chunked topk_rkl_sg (K=20)": ("chunked", "topk_rkl_sg", {"k": 20}),
    "chunked topk_rkl_renorm (K=20)": ("chunked", "topk_rkl_renorm", {"k": 20}),
    "chunked sampled_rkl": ("chunked", "sampled_rkl", {}),
    "chunked rkl, low-memory": ("chunked", "rkl", {}, 100, LOW_MEMORY_ENV),
    "chunked topk_rkl_sg (K=20), low-memory": ("chunked", "topk_rkl_sg", {"k": 20}, 100, LOW_MEMORY_ENV),
}


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_now_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def run_one(name: str, repeats: int, chunk_size: int) -> dict:
    """Runs in a fresh process: builds inputs, times fwd+bwd, saves gradients for comparison."""
    import torch

    from opdkit.objectives import make_objective
    from opdkit.objectives.logprobs import Head, chunked_objective_loss, objective_loss
    from opdkit.objectives.scores import ObjectiveInputs, TeacherScores

    impl, objective_name, options, *rest = CONFIGS[name]
    chunk_size = rest[0] if rest else chunk_size
    if impl == "trl":
        from trl.experimental.gkd import GKDTrainer
    gc.collect()
    base_peak, base_now = rss_peak_mib(), rss_now_mib()
    torch.manual_seed(0)
    hs = torch.randn(N, H).requires_grad_(True)
    ht = torch.randn(N, H)
    ws = (torch.randn(V, H) * 0.05).requires_grad_(True)
    wt = torch.randn(V, H) * 0.05
    ids = torch.randint(0, V, (N,))
    weights = torch.full((N,), 1.0 / N)
    objective = make_objective(objective_name, **options)

    def step() -> float:
        hs.grad = ws.grad = None
        if impl == "chunked":
            r = chunked_objective_loss(objective, Head(hs, ws), ObjectiveInputs(ids), weights,
                                       teacher=Head(ht, wt), chunk_size=chunk_size or None)
            loss = r.loss
        else:
            logits = hs @ ws.T
            with torch.no_grad():
                teacher_logits = ht @ wt.T
            if impl == "trl":
                loss = GKDTrainer.generalized_jsd_loss(logits, teacher_logits, labels=None, beta=options["beta"])
            else:
                scores = TeacherScores(logprobs=torch.log_softmax(teacher_logits, -1))
                loss = objective_loss(objective, logits, ObjectiveInputs(ids, scores), weights).loss
        loss.backward()
        return float(loss)

    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    peak = rss_peak_mib()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save({"hs": hs.grad, "ws": ws.grad}, OUT / f"grad_{_slug(name)}.pt")
    return {"name": name, "impl": impl, "objective": objective_name, "options": options,
            "threads": torch.get_num_threads(), "warmup_s": round(times[0], 3),
            "median_s": round(statistics.median(times[1:]), 3), "peak_minus_baseline_mib": round(peak - base_peak, 1),
            "baseline_now_mib": round(base_now, 1), "loss": loss}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def grad_rel_diff(a: str, b: str) -> float:
    import torch
    ga, gb = torch.load(OUT / f"grad_{_slug(a)}.pt"), torch.load(OUT / f"grad_{_slug(b)}.pt")
    return max(float((ga[k] - gb[k]).abs().max() / gb[k].abs().max()) for k in ("hs", "ws"))


def table(results: dict[str, dict]) -> str:
    pairs = {"chunked rkl": ["trl_gkd rkl (beta=1)", "plain rkl"],
             "chunked jsd (beta=0.5)": ["trl_gkd jsd (beta=0.5)", "plain jsd (beta=0.5)"],
             "chunked topk_rkl_sg (K=20)": ["plain topk_rkl_sg (K=20)"],
             "chunked topk_rkl_renorm (K=20)": ["plain topk_rkl_sg (K=20)"],
             "chunked rkl, low-memory": ["trl_gkd rkl (beta=1)", "plain rkl"],
             "chunked topk_rkl_sg (K=20), low-memory": ["plain topk_rkl_sg (K=20)"],
             "plain rkl": ["trl_gkd rkl (beta=1)"], "plain jsd (beta=0.5)": ["trl_gkd jsd (beta=0.5)"]}
    lines = ["| configuration | median s | peak MiB over baseline | vs | time ratio | memory ratio | max grad diff (rel) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        refs = [ref for ref in pairs.get(name, []) if ref in results] or [None]
        for ref in refs:
            if ref is None:
                lines.append(f"| {name} | {r['median_s']} | {r['peak_minus_baseline_mib']:.0f} | | | | |")
                continue
            q = results[ref]
            same_math = not (name.startswith("chunked topk_rkl_renorm"))
            diff = f"{grad_rel_diff(name, ref):.1e}" if same_math else "(different objective)"
            lines.append(f"| {name} | {r['median_s']} | {r['peak_minus_baseline_mib']:.0f} | {ref} | "
                         f"{r['median_s'] / q['median_s']:.2f}x | "
                         f"{r['peak_minus_baseline_mib'] / q['peak_minus_baseline_mib']:.3f}x | {diff} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run configurations whose name contains this")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    parser.add_argument("--chunk-size", type=int, default=0, help="0: opdkit's default for V")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.repeats, args.chunk_size)))
        return
    results = {}
    for name in CONFIGS:
        if args.only not in name:
            continue
        extra_env = CONFIGS[name][4] if len(CONFIGS[name]) > 4 else {}
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats),
                               "--chunk-size", str(args.chunk_size)], capture_output=True, text=True,
                              env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", **extra_env})
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]['median_s']} s, {results[name]['peak_minus_baseline_mib']:.0f} MiB", flush=True)
    (OUT / "objectives.json").write_text(json.dumps(results, indent=1))
    print()
    print(table(results))


if __name__ == "__main__":
    main()
