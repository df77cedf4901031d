"""Where one decode step's time goes on this CPU: matmul bytes vs per-token overhead (issue 19 item 2).

    python benchmarks/decode_step.py [--model-dir benchmarks/out/smol-hf] [--threads 1] [--batch 4] [--tokens 256]

The student of benchmarks/opd_step_vs_trl.py: SmolLM2-135M with layers 0, 3, ..., 27 kept
(10 layers, 63.7M parameters, V = 49,152), fp32 and bf16, batch 4. Measured in one process:
  generate      HF `generate` (sampling at T = 1, no top-k/top-p), ms per new token step
  forward       the model's forward of one new token per row against a DynamicCache of
                `--context` tokens, under no_grad (the part of a step that is the network)
  matmuls       the same step's weight matmuls alone (x @ W^T for every Linear and the
                lm-head, batch rows), in a Python loop over prepared tensors
  lm-head       the lm-head matmul alone
  weight bytes  the bytes those matmuls read; bytes / matmul time = the bandwidth reached
generate - forward = sampling, logits processors, cache bookkeeping and generate's Python;
forward - matmuls = attention, norms, rotary, cache updates and per-op dispatch.
Needs the converted model (python benchmarks/opd_step_vs_trl.py --only smol converts it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def linear_weights(model) -> list:
    import torch
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def measure(model, batch: int, context: int, tokens: int) -> dict:
    import torch
    from transformers import DynamicCache
    dtype = next(model.parameters()).dtype
    prompt = torch.randint(0, model.config.vocab_size, (batch, context))
    ones = torch.ones_like(prompt)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(prompt, attention_mask=ones, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True,
                             top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0)
        generate_s = (time.perf_counter() - t0) / tokens
        assert out.shape[1] == context + tokens
        cache = DynamicCache(config=model.config)
        model(prompt, past_key_values=cache, use_cache=True)
        step_ids = prompt[:, -1:]

        def one_forward():
            model(step_ids, past_key_values=cache, use_cache=True)
            cache.crop(-1)                      # drop the new token: the same context length every call
        forward_s = timed(one_forward, 30)
        weights = linear_weights(model)
        xs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=dtype) for w in weights}
        matmul_s = timed(lambda: [xs[w.shape[1]] @ w.T for w in weights], 30)
        head = model.get_output_embeddings().weight
        head_s = timed(lambda: xs[head.shape[1]] @ head.T, 30)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    return {"generate_ms": generate_s * 1e3, "forward_ms": forward_s * 1e3, "matmuls_ms": matmul_s * 1e3,
            "lm_head_ms": head_s * 1e3, "weight_mb": weight_bytes / 1e6, "gb_per_s": weight_bytes / matmul_s / 1e9,
            "lm_head_share_of_bytes": head.numel() / sum(w.numel() for w in weights)}


def pruned_student(model_dir: Path, threads: int):
    """The benchmarks' student: the model at `model_dir` cut to every third layer, fp32, eval mode,
    loaded after seeding torch and setting its thread count (decode_options.py uses it too)."""
    import torch
    from transformers import AutoModelForCausalLM

    from opdkit.models.loading import keep_every_nth_layer
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    keep_every_nth_layer(base, 3)
    return base


def cpu_model() -> str:
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=HERE / "out" / "smol-hf")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context", type=int, default=40, help="prompt tokens before the measured step (the anchor's ~30-40)")
    p.add_argument("--tokens", type=int, default=64, help="new tokens in the generate measurement")
    a = p.parse_args()
    if not (a.model_dir / "config.json").is_file():
        print(f"decode_step: error: no model at {a.model_dir}; convert it with "
              f"`python benchmarks/opd_step_vs_trl.py --only smol` or pass --model-dir", file=sys.stderr)
        raise SystemExit(2)
    import torch
    base = pruned_student(a.model_dir, a.threads)
    print(f"{cpu_model()}; torch {torch.__version__}, {a.threads} thread(s); batch {a.batch}, context {a.context}, "
          f"{sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters\n")
    print("| dtype | generate ms/step | forward ms | weight matmuls ms | lm-head ms | weight MB | matmul GB/s | "
          "lm-head share of bytes | sampling+generate overhead ms | non-matmul forward ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        r = measure(base.to(dtype), a.batch, a.context, a.tokens)
        print(f"| {str(dtype).split('.')[-1]} | {r['generate_ms']:.1f} | {r['forward_ms']:.1f} | {r['matmuls_ms']:.1f} | "
              f"{r['lm_head_ms']:.1f} | {r['weight_mb']:.0f} | {r['gb_per_s']:.1f} | {r['lm_head_share_of_bytes']:.0%} | "
              f"{r['generate_ms'] - r['forward_ms']:.1f} | {r['forward_ms'] - r['matmuls_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
