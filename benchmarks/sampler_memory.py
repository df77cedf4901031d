"""Peak memory of one rollout: opdkit's HFSampler vs plain HF `generate`, same model, prompts and length.

    python benchmarks/sampler_memory.py --model-dir DIR --length 256 --batch 4      # student = every 3rd layer of DIR
    python benchmarks/sampler_memory.py --tiny                                      # the tiny pair (CI)

opdkit's sampler used to ask `generate` for `output_scores=True` and stack the per-step scores into a
(B, L, V) tensor to read the sampled tokens' log-probs (BENCHMARKS.md, issue 19 session 5); it now
records them per step (`models/rollout.BehaviourRecorder`). This measures what the sampler costs
over plain `generate`: each arm runs in a fresh process, loads the model, cuts it to every n-th
layer, resets the kernel's peak-RSS mark (`/proc/self/clear_refs` = 5), samples once, and reports
VmHWM minus the RSS just before sampling. `generate` is called with the same GenerationConfig as
HFSampler except `output_scores`. Printed beside: 3 x B x L x V x 4 bytes (scores, their stack, the
log-softmax). Writes nothing; prints a markdown table and a JSON line per arm.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("opdkit_hf_sampler", "generate_without_scores")


def kib(field: str) -> float:
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))


def load(model_dir: str, drop_every: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opdkit.models.loading import keep_layers
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if drop_every > 1:
        keep_layers(model, list(range(0, model.config.num_hidden_layers, drop_every)))
    return model, AutoTokenizer.from_pretrained(model_dir)


def child(arm: str, model_dir: str, drop_every: int, length: int, batch: int) -> dict:
    """One arm, in this (fresh) process."""
    import torch
    from transformers import GenerationConfig

    from opdkit.models.rollout import HFSampler, left_pad, response_length
    model, tok = load(model_dir, drop_every)
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {10 + i} + {31 * i % 89}?"}],
                                       add_generation_prompt=True, tokenize=True, return_dict=False) for i in range(batch)]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) else list(p) for p in prompts]
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    before = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")                                    # reset VmHWM to the current RSS
    start = time.perf_counter()
    if arm == "opdkit_hf_sampler":
        out = HFSampler(eos_id=eos, pad_id=pad).sample(model, prompts, max_new_tokens=length, temperature=1.0, top_p=1.0)
        tokens = sum(len(r) for r in out.response_ids)
    else:
        ids, mask = left_pad(prompts, pad)
        config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=length,
                                  eos_token_id=eos, pad_token_id=pad)
        with torch.no_grad():
            seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        tokens = sum(response_length(row, eos, pad) for row in seqs[:, ids.shape[1]:])
    seconds = time.perf_counter() - start
    vocab = model.get_output_embeddings().weight.shape[0]
    return {"arm": arm, "batch": batch, "length": length, "vocab": vocab, "new_tokens": tokens, "sample_s": seconds,
            "peak_over_before_mib": (kib("VmHWM") - before) / 1024,
            "predicted_scores_mib": 3 * batch * length * vocab * 4 / 2**20}


def fail(message: str) -> None:
    print(f"sampler_memory: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--tiny", action="store_true", help="the tiny 6-layer pair of opd_step_vs_trl.py (built if absent)")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--drop-every", type=int, default=3)
    p.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, str(args.model_dir), args.drop_every, args.length, args.batch)))
        return
    if args.tiny:
        from opd_step_vs_trl import ensure_tiny
        args.model_dir = HERE / "out" / "tiny-6l"
        ensure_tiny(args.model_dir)
    if args.model_dir is None or not (args.model_dir / "config.json").is_file():
        fail(f"no HF model directory at {args.model_dir}; pass --model-dir DIR (with config.json) or --tiny")
    if not Path("/proc/self/clear_refs").exists():
        fail("needs Linux /proc/self/clear_refs to reset the peak-RSS mark")
    rows = [run_arm(arm, args) for arm in ARMS]
    print("| arm | batch x length | V | new tokens | sampling s | peak over pre-sampling RSS MiB | 3 x B x L x V x 4 B, MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['batch']} x {r['length']} | {r['vocab']} | {r['new_tokens']} | {r['sample_s']:.1f} | "
              f"{r['peak_over_before_mib']:.0f} | {r['predicted_scores_mib']:.0f} |")


def run_arm(arm: str, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__, "--child", arm, "--model-dir", str(args.model_dir), "--length",
                           str(args.length), "--batch", str(args.batch), "--drop-every", str(args.drop_every)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        fail(f"arm {arm} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
