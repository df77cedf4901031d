"""opdkit's FSDP2 path on one device (world size 1 under torchrun) against the plain single process.

    python benchmarks/gpu_fsdp.py --models DIR --out plain.json [--dry-run]
    torchrun --standalone --nproc-per-node 1 benchmarks/gpu_fsdp.py --models DIR --out fsdp.json --fsdp [--dry-run]

`opdkit.scale.distributed.setup` treats WORLD_SIZE=1 as a plain process (run.parallel is ignored),
so at world size 1 nothing would be sharded. To run the FSDP2 code on one GPU, this script
joins the torchrun group itself (NCCL on CUDA, gloo on CPU), lets `setup` wrap the student
with `fully_shard` as it does for two ranks, and then sets the Dist's world back to 1: the
sharding, all-gathers, reduce-scatters and gradient-sum settings are opdkit's; each
collective runs over a group of one. Same seed, prompts and config as the plain run; fp32,
so the two loss and gradient-norm trajectories should agree to float rounding.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_shapes import prompt_texts, random_model  # noqa: E402

GPU = {"batch": 4, "prompt_words": 32, "response": 64, "steps": 3}      # Qwen3-1.7B teacher, Qwen3-0.6B student, fp32
DRY = {"batch": 2, "prompt_words": 6, "response": 6, "steps": 3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    setting = DRY if a.dry_run else GPU
    import torch
    import torch.distributed as dist

    import opdkit.engine.session
    from opdkit.engine.config import load_config
    from opdkit.engine.runner import Runner
    from opdkit.models.loading import DTYPES
    from opdkit.scale import distributed
    device = "cuda" if torch.cuda.is_available() else "cpu"
    opdkit.engine.session.load_model = lambda path, dtype="float32", keep_every=0: random_model(path, DTYPES[dtype], device)
    work = a.out.with_suffix("")
    (work / "run").mkdir(parents=True, exist_ok=True)
    vocab = json.loads((a.models / "student" / "arch.json").read_text())["vocab"]
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in prompt_texts(32, setting["prompt_words"], vocab)))
    cfg = load_config("distill", overrides=[
        f"model.student={a.models / 'student'}", f"model.teacher={a.models / 'teacher'}", "model.dtype=float32",
        f"data.train={data}", f"optim.prompts_per_step={setting['batch']}", f"optim.micro_batch={setting['batch'] // 2}",
        f"rollout.max_new_tokens={setting['response']}", "optim.lr=1e-4", f"optim.steps={setting['steps'] + 1000}",
        "objective.name=rkl", "run.progress=false", "run.sample_every=0", f"run.out={work / 'run'}",
        "guard.enabled=false", "run.seed=7"])
    torch.manual_seed(0)             # the same random weights in both runs
    s = opdkit.engine.session.build_session(cfg)
    if a.fsdp:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        os.environ["WORLD_SIZE"] = "2"               # past setup's single-process shortcut ...
        distributed.setup(s, "fsdp")
        os.environ["WORLD_SIZE"] = "1"
        s.dist.world = 1                             # ... and back to the group of one it runs in
        sharded = sum(1 for m in s.student_forward.modules() if type(m).__name__.startswith("FSDP"))
    runner = Runner(s, work / "run")
    runner.loop(until=setting["steps"])
    rows = [{"loss": r["train/loss"], "grad_norm": r["train/grad_norm"], "step_s": r["time/step_s"]} for r in runner.rows]
    a.out.write_text(json.dumps({"fsdp": a.fsdp, "device": device, "rows": rows,
                                 "fsdp_modules": sharded if a.fsdp else 0,
                                 "backend": dist.get_backend() if a.fsdp else None}, indent=1))
    if a.fsdp:
        distributed.teardown()


if __name__ == "__main__":
    main()
