"""One opdkit arm of benchmarks/opd_step_vs_trl.py: N distill steps, timed per phase.

    python benchmarks/opd_arm.py --model-dir DIR --objective rkl --steps 8 --out FILE.json

Mirrors the TRL anchor (../shared/anchors/bench_distill.py) setting for setting: teacher =
the model in DIR, student = its layers 0, 3, 6, ... (every third), the anchor's 64 arithmetic
prompts in chat form, 4 prompts per step, one response each, 64 new tokens at T = 1 with
no top-k / top-p, AdamW at lr 1e-6. The step is opdkit's own `Runner.one_step` with its
diagnostics on; the guard is off (the layer-dropped student starts looping within a few
steps and the guard would stop the run: RESULTS.md (e)). The loop stops before the final
checkpoint (TRL's arm saves none either). Writes a JSON summary in the anchor's field names.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--objective", default="rkl", help="opdkit objective name (rkl = TRL beta 1, jsd with --beta)")
    p.add_argument("--beta", type=float, default=None, help="jsd beta (TRL convention)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--drop-every", type=int, default=3)
    p.add_argument("--anchors", type=Path, default=ANCHORS)
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="extra config overrides")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    # The anchor's own module: its prompts and RSS readings, so both sides measure alike
    # (it imports torch and transformers, counted in the post-import baseline as in the anchor).
    sys.path.insert(0, str(args.anchors))
    from common import arithmetic_prompts, rss_now_mib, rss_peak_mib

    from opdkit.engine.config import load_config
    from opdkit.engine.runner import Runner
    from opdkit.engine.session import build_session
    rss0 = rss_peak_mib()
    work = args.out.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    prompts = work / "prompts.jsonl"
    questions = [chat[0]["content"] for chat in arithmetic_prompts(64)]       # the anchor's user turns, in order
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    options = [f"objective.options={{beta: {args.beta}}}"] if args.beta is not None else []
    cfg = load_config("distill", overrides=[
        f"model.student={args.model_dir}", f"model.teacher={args.model_dir}", f"model.drop_layers_every={args.drop_every}",
        f"data.train={prompts}", "optim.prompts_per_step=4", "optim.micro_batch=4", "rollout.max_new_tokens=64",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "optim.lr=1e-6", f"optim.steps={args.steps + 1000}",
        f"objective.name={args.objective}", *options, "run.progress=false", "run.sample_every=0", f"run.out={work / 'run'}",
        "guard.enabled=false",     # TRL has none; and the layer-dropped student loops, which the guard would stop
        *args.set])
    s = build_session(cfg)
    rss_models = rss_now_mib()
    print(f"after loading: RSS {rss_models:.0f} MiB, peak so far {rss_peak_mib():.0f} MiB", flush=True)
    (work / "run").mkdir(exist_ok=True)
    runner = Runner(s, work / "run")
    runner.start()
    shapes = record_packed_shapes()
    t0 = time.perf_counter()
    runner.loop(until=args.steps)
    train_s = time.perf_counter() - t0
    flops = [train_flops(s, step) for step in shapes]
    write_summary(args, runner.rows, rss0, rss_models, rss_peak_mib(), train_s, flops)


def record_packed_shapes() -> list[list[tuple[int, int, int]]]:
    """Per step: [(rows, padded width, response tokens)] of what the student trains on.

    Each step here is one micro-batch (4 prompts, micro_batch 4), so each pack call is a step.
    """
    import opdkit.engine.train as train
    shapes: list[list[tuple[int, int, int]]] = []
    original = train.pack

    def pack(prompts, responses, *rest, **kw):
        shapes.append([])
        shapes[-1].append((len(prompts), max(len(p) + len(r) for p, r in zip(prompts, responses)),
                           sum(len(r) for r in responses)))
        return original(prompts, responses, *rest, **kw)
    train.pack = pack
    return shapes


def matmul_params(model) -> tuple[int, int, int]:
    """(parameters in decoder-layer matmuls, layers, hidden size) of an HF decoder."""
    cfg = model.config
    layers = model.get_decoder().layers
    per_layer = sum(p.numel() for n, p in layers[0].named_parameters() if p.dim() == 2)
    return per_layer * len(layers), len(layers), cfg.hidden_size


def train_flops(s, micro_batches: list[tuple[int, int, int]]) -> float:
    """FLOPs of teacher scoring + student forward/backward + the chunked objective's matmuls.

    Backbone: 2 FLOPs per matmul parameter per token forward, 4 backward; attention scores
    and values: 4 * T^2 * H per layer per sequence forward (SDPA computes the full square).
    Heads, on the N response tokens only: student logits, dL/dh and dL/dW (3 x 2NHV) and
    teacher logits (2NHV). Norms, softmax and the optimizer are not counted.
    """
    vocab = s.student.get_output_embeddings().weight.shape[0]
    ps, ls, hs = matmul_params(s.student)
    pt, lt, ht = matmul_params(s.teacher.model())
    total = 0.0
    for rows, width, n in micro_batches:
        tokens = rows * width
        attention = lambda layers, h: 4 * rows * width * width * h * layers
        total += 6 * ps * tokens + 3 * attention(ls, hs)          # student forward + backward
        total += 2 * pt * tokens + attention(lt, ht)              # teacher forward
        total += 6 * n * hs * vocab + 2 * n * ht * vocab          # heads
    return total


def write_summary(args, rows: list[dict], rss0: float, rss_models: float, rss_peak: float, train_s: float,
                  flops: list[float]) -> None:
    measured = rows[1:]                          # step 1 excluded, as in the anchor
    train_phase = [r["time/teacher_s"] + r["time/student_forward_s"] + r["time/backward_s"] for r in measured]
    wall = [r["time/step_s"] for r in measured]
    tokens = [r["rollout/tokens"] for r in measured]
    summary = {
        "tag": f"opdkit_{args.objective}" + (f"_beta{args.beta}" if args.beta is not None else ""),
        "objective": args.objective, "beta": args.beta, "steps": len(rows), "steps_measured": len(measured),
        "median_step_wall_s": statistics.median(wall), "mean_step_wall_s": statistics.mean(wall),
        "step_wall_s_all": [round(r["time/step_s"], 3) for r in rows],
        "completion_tokens_per_step": tokens, "mean_completion_tokens_per_step": statistics.mean(tokens),
        "tokens_per_s_step": sum(tokens) / sum(wall),
        "tokens_per_s_generate_only": sum(tokens) / sum(r["time/rollout_s"] for r in measured),
        "phases_median_s": {k[len("time/"):-2]: statistics.median(r[k] for r in measured)
                            for k in measured[0] if k.startswith("time/") and k != "time/step_s"},
        "loss_all": [r["train/loss"] for r in rows], "final_loss": rows[-1]["train/loss"],
        "train_phase_flops_per_step": flops[1:], "train_phase_s": train_phase,
        "train_phase_gflops_per_s": sum(flops[1:]) / sum(train_phase) / 1e9,
        "rss_baseline_mib_before_models": rss0, "rss_after_models_mib": rss_models, "peak_rss_mib": rss_peak,
        "train_runtime_s": train_s,
    }
    args.out.write_text(json.dumps({"summary": summary, "per_step": rows}, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
