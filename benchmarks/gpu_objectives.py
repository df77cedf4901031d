"""Chunked objectives at N = 8,192 to 65,536 tokens and the real vocabulary, vs TRL's loss and Liger's fused JSD.

    python benchmarks/gpu_objectives.py --out FILE.json [--dry-run]

Student hidden states (N, 2048) and lm-head (151,936, 2048), teacher (N, 4096) and
(151,936, 4096): Qwen3-1.7B / Qwen3-8B heads, bf16 on CUDA. Forward + backward, gradients
w.r.t. the student hidden states and lm-head. Arms: opdkit `chunked_objective_loss` (RKL,
JSD beta 0.5, top-K tail K = 20), TRL's `_chunked_divergence_loss` (what DistillationTrainer
calls; beta 1 = RKL, 0.5 = JSD) and, when liger-kernel is installed, `LigerFusedLinearJSD`
(beta 0.5). Time: median of the timed repeats after a warm-up, CUDA-synchronised. Memory:
peak allocated during the call minus allocated before it. Gradients of the same objective
are compared to TRL's (max |g - g_trl| / max |g_trl|). An out-of-memory is recorded, not fatal.
The JSON is rewritten after every N, so a timeout keeps the sizes already measured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

GPU = {"ns": [8192, 16384, 32768, 65536], "hs": 2048, "ht": 4096, "vocab": 151936, "repeats": 2}
DRY = {"ns": [64, 128], "hs": 32, "ht": 64, "vocab": 2048, "repeats": 1}
ARMS = [("trl rkl", "trl", 1.0), ("opdkit rkl", "rkl", None), ("trl jsd 0.5", "trl", 0.5),
        ("opdkit jsd 0.5", "jsd", 0.5), ("liger jsd 0.5", "liger", 0.5), ("opdkit topk_rkl_tail K=20", "topk_rkl_tail", 20)]
SAME_MATH = {"opdkit rkl": "trl rkl", "opdkit jsd 0.5": "trl jsd 0.5", "liger jsd 0.5": "trl jsd 0.5"}


def loss_fn(kind: str, option, tensors: dict):
    """A closure computing the loss of one arm from the shared inputs."""
    import torch
    hs, ws, ht, wt = tensors["hs"], tensors["ws"], tensors["ht"], tensors["wt"]
    n = hs.shape[0]
    if kind == "trl":
        from trl.trainer.distillation_trainer import _chunked_divergence_loss
        mask = torch.ones(1, n, device=hs.device)
        return lambda: _chunked_divergence_loss(hs[None], ht[None], ws, wt, mask, beta=option)[0]
    if kind == "liger":
        from liger_kernel.transformers import LigerFusedLinearJSD
        jsd = LigerFusedLinearJSD(jsd_beta=option)
        return lambda: jsd(hs, ws, ht, wt, None)
    from opdkit.objectives import make_objective
    from opdkit.objectives.logprobs import Head, chunked_objective_loss
    from opdkit.objectives.scores import ObjectiveInputs
    options = {"beta": option} if kind == "jsd" else {"k": option} if kind.startswith("topk") else {}
    objective = make_objective(kind, **options)
    weights = torch.full((n,), 1.0 / n, device=hs.device)
    return lambda: chunked_objective_loss(objective, Head(hs, ws), ObjectiveInputs(tensors["ids"]), weights,
                                          teacher=Head(ht, wt)).loss


def measure(name: str, kind: str, option, tensors: dict, repeats: int) -> dict:
    import torch
    cuda = tensors["hs"].is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    compute = loss_fn(kind, option, tensors)
    times, before, peak = [], 0, 0
    for _ in range(repeats + 1):
        tensors["hs"].grad = tensors["ws"].grad = None
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        loss = compute()
        loss.backward()
        sync()
        times.append(time.perf_counter() - t0)
        if cuda:
            peak = max(peak, torch.cuda.max_memory_allocated() - before)
    grads = {k: tensors[k].grad.float() for k in ("hs", "ws")}
    return {"name": name, "median_s": statistics.median(times[1:]), "warmup_s": times[0],
            "peak_over_inputs_gib": peak / 2**30 if cuda else None, "loss": float(loss.detach())}, grads


def inputs(n: int, size: dict, device: str, dtype):
    import torch
    g = torch.Generator(device=device).manual_seed(n)
    rand = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)
    return {"hs": rand(n, size["hs"]).requires_grad_(True),
            "ws": rand(size["vocab"], size["hs"], scale=0.02).requires_grad_(True),
            "ht": rand(n, size["ht"]), "wt": rand(size["vocab"], size["ht"], scale=0.02),
            "ids": torch.randint(0, size["vocab"], (n,), generator=g, device=device)}


def available(kind: str) -> str | None:
    import importlib.util

    import torch
    if kind == "trl" and importlib.util.find_spec("trl") is None:
        return "not run: trl is not installed (bring its wheel, BENCHMARKS.md)"
    if kind == "liger" and (importlib.util.find_spec("liger_kernel") is None or not torch.cuda.is_available()):
        return "not run: liger-kernel is not installed or there is no CUDA device (Triton kernels)"
    return None


def run(size: dict, out: Path) -> dict:
    import torch
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    report = {"device": device, "dtype": str(dtype), "size": size, "rows": [], "skipped": {}}
    for n in size["ns"]:
        tensors, reference = inputs(n, size, device, dtype), {}
        for name, kind, option in ARMS:
            reason = available(kind)
            if reason:
                report["skipped"][name] = reason
                continue
            try:
                row, grads = measure(name, kind, option, tensors, size["repeats"])
            except torch.OutOfMemoryError:
                row, grads = {"name": name, "error": "out of memory"}, None
            except Exception as e:           # an API change in an optional package: recorded, not fatal
                row, grads = {"name": name, "error": f"{type(e).__name__}: {str(e)[:200]}"}, None
            row["n"] = n
            ref = SAME_MATH.get(name)
            if grads is not None and ref in reference:
                row["max_grad_diff_vs_" + ref.replace(" ", "_")] = max(
                    float((grads[k] - reference[ref][k]).abs().max() / reference[ref][k].abs().max()) for k in grads)
            if grads is not None and kind == "trl":
                reference[name] = grads
            report["rows"].append(row)
            if cuda:
                torch.cuda.empty_cache()
        del tensors, reference
        out.write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    run(DRY if a.dry_run else GPU, a.out)


if __name__ == "__main__":
    main()
