"""AdamW moment storage on CPU, fp32 (torch fused) vs 8-bit (bitsandbytes): peak RSS and CPU time per step.

    python benchmarks/optimizer_state.py [--repeats 2]

Parameters shaped like the 10-layer SmolLM2 student of benchmarks/opd_step_vs_trl.py (a 49152 x
576 embedding and twenty 2304 x 576 matrices, 61M in all) with random gradients, as in
benchmarks/adamw.py. One fresh process per arm and repeat, arms alternating. Reported: the
process's peak RSS after the first step (the state then exists) minus its peak before it
(weights + gradients + import), i.e. what the optimizer state and its temporaries add; and CPU
seconds per step over three more steps (process time: robust to other jobs on a shared VM).
Also, after 20 steps of the same gradients, how far the 8-bit arm's weights are from fp32's.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def params_and_grads():
    import torch
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(49152, 576))] + [torch.nn.Parameter(torch.randn(2304, 576)) for _ in range(20)]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def make(mode: str, params):
    from opdkit.engine.optim import adamw, adamw_8bit
    return (adamw_8bit if mode == "8bit" else adamw)(params, lr=1e-4, weight_decay=0.0)


def one(mode: str) -> dict:
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = params_and_grads()
    optimizer = make(mode, params)
    before = peak()
    optimizer.step()
    after_first, start = peak(), time.process_time()
    for _ in range(3):
        optimizer.step()
    return {"mode": mode, "params_m": sum(p.numel() for p in params) / 1e6, "peak_before_mib": before,
            "state_added_mib": after_first - before, "peak_mib": peak(),
            "cpu_s_per_step": (time.process_time() - start) / 3}


def drift(steps: int = 20) -> float:
    """||w_8bit - w_fp32|| / ||w_fp32 - w_0|| after `steps` steps of the same (fixed) gradients."""
    import torch
    runs = {}
    for mode in ("fp32", "8bit"):
        params = params_and_grads()
        start = torch.cat([p.detach().reshape(-1) for p in params])
        optimizer = make(mode, params)
        for _ in range(steps):
            optimizer.step()
        runs[mode] = torch.cat([p.detach().reshape(-1) for p in params])
    return float((runs["8bit"] - runs["fp32"]).norm() / (runs["fp32"] - start).norm())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("fp32", "8bit", "drift"):
        print(json.dumps(one(sys.argv[1]) if sys.argv[1] != "drift" else {"drift": drift()}))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    print(f"load average at start {open('/proc/loadavg').read().split()[0]}")
    print("| arm | repeat | parameters | peak before first step MiB | added by the first step MiB | CPU s/step |")
    print("|---|---|---|---|---|---|")
    for r in range(a.repeats):
        for mode in (("fp32", "8bit") if r % 2 == 0 else ("8bit", "fp32")):
            out = subprocess.run([sys.executable, __file__, mode], check=True, capture_output=True, text=True).stdout
            x = json.loads(out.strip().splitlines()[-1])
            print(f"| {mode} | {r + 1} | {x['params_m']:.1f}M | {x['peak_before_mib']:.0f} | {x['state_added_mib']:.0f} | "
                  f"{x['cpu_s_per_step']:.3f} |", flush=True)
    out = subprocess.run([sys.executable, __file__, "drift"], check=True, capture_output=True, text=True).stdout
    print(f"\nafter 20 steps of fixed gradients: ||w_8bit - w_fp32|| / ||w_fp32 - w_0|| = "
          f"{json.loads(out.strip().splitlines()[-1])['drift']:.4f}")
    print(f"load average at end {open('/proc/loadavg').read().split()[0]}")


if __name__ == "__main__":
    main()
