"""Do a static KV cache and a compiled decode step pay on this CPU? (issue 19 item 2)

    python benchmarks/decode_options.py [--model-dir benchmarks/out/smol-hf] [--threads 1] [--repeats 3]

The rollout student of benchmarks/opd_step_vs_trl.py (SmolLM2-135M, layers 0, 3, ..., 27: 10
layers, 63.7M parameters, V = 49,152), batch 4, 40-token prompts, 64 new tokens sampled at
T = 1 by HF `generate`, in fp32 and bf16. Arms, all in one process:
  dynamic           generate's default DynamicCache (what opdkit's HFSampler runs today)
  static            cache_implementation="static", compilation disabled
  static+compile    cache_implementation="static" with torch.compile (inductor) of the decode
                    forward (CompileConfig(_compile_all_devices=True): transformers compiles only on
                    accelerators otherwise); the first call's compile time is reported separately
The arms are interleaved (arm order rotates every repeat) because the machine is shared: read
ratios to `dynamic` within a repeat, not absolute milliseconds. Times are the process's CPU time
(time.process_time: with one thread, robust to other jobs taking the cores), wall time beside it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ARMS = ("dynamic", "static", "static+compile")


def generation_config(arm: str, tokens: int):
    from transformers import CompileConfig, GenerationConfig
    extra = {}
    if arm != "dynamic":
        extra["cache_implementation"] = "static"
    if arm == "static":
        extra["disable_compile"] = True
    if arm == "static+compile":
        compile_config = CompileConfig(mode="default", fullgraph=False, dynamic=False)
        compile_config._compile_all_devices = True      # a class attribute, not an __init__ argument
        extra["compile_config"] = compile_config
    return GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=tokens,
                            min_new_tokens=tokens, pad_token_id=0, eos_token_id=None, **extra)


def one_generate(model, prompt, config) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one generate call."""
    import torch
    with torch.no_grad():
        t0, c0 = time.perf_counter(), time.process_time()
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    assert out.shape[1] == prompt.shape[1] + config.max_new_tokens
    return cpu, wall


def run(model, batch: int, context: int, tokens: int, repeats: int) -> dict:
    """{arm: {"first_s", "ms_per_token": [per repeat]}} for one model."""
    import torch
    prompt = torch.randint(0, model.config.vocab_size, (batch, context))
    out = {arm: {"ms_per_token": [], "wall_ms_per_token": []} for arm in ARMS}
    for arm in ARMS:                                   # warm-up; for the compiled arm this is the compile
        out[arm]["first_s"] = one_generate(model, prompt, generation_config(arm, tokens))[1]
    for r in range(repeats):
        order = ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]
        for arm in order:
            cpu, wall = one_generate(model, prompt, generation_config(arm, tokens))
            out[arm]["ms_per_token"].append(cpu / tokens * 1e3)
            out[arm]["wall_ms_per_token"].append(wall / tokens * 1e3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path(__file__).resolve().parent / "out" / "smol-hf")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context", type=int, default=40)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtypes", default="float32,bfloat16")
    a = p.parse_args()
    if not (a.model_dir / "config.json").is_file():
        print(f"decode_options: error: no model at {a.model_dir}; convert it with "
              f"`python benchmarks/opd_step_vs_trl.py --only smol` or pass --model-dir", file=sys.stderr)
        raise SystemExit(2)
    import torch
    from decode_step import cpu_model, pruned_student  # beside this file
    base = pruned_student(a.model_dir, a.threads)
    print(f"{cpu_model()}; torch {torch.__version__}, {a.threads} thread(s); batch {a.batch}, context {a.context}, "
          f"{a.tokens} new tokens; load average at start {open('/proc/loadavg').read().split()[0]}\n")
    print("| dtype | arm | first call wall s | CPU ms/token per repeat | median | x dynamic (per-repeat ratios) | "
          "wall ms/token median |")
    print("|---|---|---|---|---|---|---|")
    for name in a.dtypes.split(","):
        torch._dynamo.reset()
        r = run(base.to(getattr(torch, name)), a.batch, a.context, a.tokens, a.repeats)
        for arm in ARMS:
            ms = r[arm]["ms_per_token"]
            ratios = [m / d for m, d in zip(ms, r["dynamic"]["ms_per_token"])]
            print(f"| {name} | {arm} | {r[arm]['first_s']:.1f} | {' / '.join(f'{m:.1f}' for m in ms)} | "
                  f"{statistics.median(ms):.1f} | {' / '.join(f'{x:.2f}' for x in ratios)} | "
                  f"{statistics.median(r[arm]['wall_ms_per_token']):.1f} |", flush=True)
    print(f"\nload average at end {open('/proc/loadavg').read().split()[0]}")


if __name__ == "__main__":
    main()
