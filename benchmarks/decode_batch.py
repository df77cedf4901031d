"""More sequences per decode step: rows per generate call, today's seeding vs rows seeded one by one (issue 19 item 3).

    python benchmarks/decode_batch.py [--model-dir /work/models/smollm2-fp32] [--rows 16] [--repeats 2]

The rollout student of benchmarks/opd_step_vs_trl.py (SmolLM2-135M, layers 0, 3, ..., 27), one
thread, `--rows` prompts of 24-56 random tokens (lengths spread so sorting by length matters), 64
new tokens at T = 1, EOS disabled (every row runs to the budget, as the layer-dropped student
does). Arms, interleaved, all through opdkit's HFSampler:
  micro-batch 4     today's default path: one generate call per 4 rows, seeded per call
  decode_batch 4    rollout.decode_batch=4: rows seeded one by one (the logits processor's cost)
  decode_batch N    rollout.decode_batch=N: every row in one call
Reported: CPU seconds (process time, robust to the shared machine) per 1000 sampled tokens.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def arms(rows: int) -> dict:
    return {"micro-batch 4": ("micro", 4), "decode_batch 4": ("rows", 4), f"decode_batch {rows}": ("rows", rows)}


def run_arm(sampler, model, prompts, kind: str, size: int, tokens: int) -> float:
    """CPU seconds for all prompts."""
    from opdkit.models.checkpoint import seeded
    from opdkit.models.rollout import sample_in_decode_batches
    c0 = time.process_time()
    if kind == "micro":
        for j in range(0, len(prompts), size):
            with seeded(1000 + j):
                sampler.sample(model, prompts[j:j + size], max_new_tokens=tokens)
    else:
        sample_in_decode_batches(sampler, model, prompts, [1000 + i for i in range(len(prompts))], size,
                                 max_new_tokens=tokens)
    return time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("/work/models/smollm2-fp32"))
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    a = p.parse_args()
    if not (a.model_dir / "config.json").is_file():
        print(f"decode_batch: error: no model at {a.model_dir}; pass --model-dir", file=sys.stderr)
        raise SystemExit(2)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")     # eos -1 warns once per call
    import torch
    from transformers import AutoModelForCausalLM

    from opdkit.models.loading import keep_every_nth_layer
    from opdkit.models.rollout import HFSampler
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=getattr(torch, a.dtype)).eval()
    keep_every_nth_layer(model, 3)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, model.config.vocab_size, (int(n),), generator=g).tolist()
               for n in torch.randint(24, 57, (a.rows,), generator=g)]
    sampler = HFSampler(eos_id=-1, pad_id=0)          # no EOS: every row runs to the budget
    print(f"{a.rows} rows x {a.tokens} tokens, {a.dtype}, 1 thread; load average at start "
          f"{open('/proc/loadavg').read().split()[0]}\n")
    times = {name: [] for name in arms(a.rows)}
    run_arm(sampler, model, prompts[:2], "rows", 2, 4)                   # warm-up
    for r in range(a.repeats):
        names = list(arms(a.rows))
        for name in names[r % len(names):] + names[:r % len(names)]:
            kind, size = arms(a.rows)[name]
            times[name].append(run_arm(sampler, model, prompts, kind, size, a.tokens))
    base = times["micro-batch 4"]
    print("| arm | CPU s per 1000 tokens, per repeat | median | x micro-batch 4 (per repeat) |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        per_k = [t / (a.rows * a.tokens) * 1e3 for t in ts]
        print(f"| {name} | {' / '.join(f'{x:.2f}' for x in per_k)} | {statistics.median(per_k):.2f} | "
              f"{' / '.join(f'{t / b:.2f}' for t, b in zip(ts, base))} |")
    print(f"\nload average at end {open('/proc/loadavg').read().split()[0]}")


if __name__ == "__main__":
    main()
