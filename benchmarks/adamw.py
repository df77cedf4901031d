"""AdamW implementations on CPU: peak RSS and CPU time per step, one fresh process each.

    python benchmarks/adamw.py

Parameters shaped like the 10-layer SmolLM2 student (a 49152 x 576 embedding and twenty
2304 x 576 matrices, 61M in all) with random gradients. Reports the process's peak RSS
after one warm-up step (the optimizer state then exists) and after three more, and CPU
seconds per step (process time: robust to other jobs on a shared VM).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def one(mode: str) -> dict:
    import torch
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(49152, 576))] + [torch.nn.Parameter(torch.randn(2304, 576)) for _ in range(20)]
    for p in params:
        p.grad = torch.randn_like(p)
    options = {"fused": True} if mode == "fused" else {"foreach": mode == "foreach"}
    optimizer = torch.optim.AdamW(params, lr=1e-3, **options)
    optimizer.step()
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    after_warmup, start = peak(), time.process_time()
    for _ in range(3):
        optimizer.step()
    return {"mode": mode, "peak_after_warmup_mib": after_warmup, "peak_mib": peak(),
            "cpu_s_per_step": (time.process_time() - start) / 3}


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(one(sys.argv[1])))
        return
    for mode in ("foreach", "forloop", "fused"):
        out = subprocess.run([sys.executable, __file__, mode], check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        print(f"{r['mode']:<8} peak {r['peak_mib']:.0f} MiB, {r['cpu_s_per_step']:.3f} CPU s/step")


if __name__ == "__main__":
    main()
