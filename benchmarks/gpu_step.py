"""One OPD step on the device: opdkit's real training step, or TRL's DistillationTrainer, same models and batch.

    python benchmarks/gpu_step.py opdkit --models DIR --out FILE.json [--dry-run]
    python benchmarks/gpu_step.py trl    --models DIR --out FILE.json [--dry-run]

DIR holds `teacher/` and `student/` written by gpu_shapes.write_model_dir (configs and the
tokenizer; weights are random, made on the device). The opdkit arm builds its Session
through `build_session` with one seam replaced: `opdkit.engine.session.load_model` returns the
randomly initialised model on the device instead of reading weights (there are none). The
step is `Runner.loop` -> `train_step`, with `run.profile=true` (a CUDA sync at each phase
boundary, so phase times are real). The TRL arm is DistillationTrainer (beta 1 = reverse KL,
no vLLM, no gradient checkpointing, bf16 on CUDA), timed by callbacks like the anchor
harness ../shared/anchors/bench_distill.py. Step 1 is excluded from medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_shapes import prompt_texts, random_model  # noqa: E402

GPU = {"batch": 8, "prompt_words": 64, "response": 256, "steps": 4}
DRY = {"batch": 2, "prompt_words": 6, "response": 8, "steps": 3}


def device_and_dtype():
    import torch
    return ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")


def cuda_memory(reset: bool = False) -> dict:
    import torch
    if not torch.cuda.is_available():
        return {}
    torch.cuda.synchronize()
    out = {"allocated_gib": torch.cuda.memory_allocated() / 2**30, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return out


def opdkit_arm(models: Path, work: Path, setting: dict, objective: str = "rkl") -> dict:
    import torch

    import opdkit.engine.session
    from opdkit.engine.config import load_config
    from opdkit.engine.runner import Runner
    from opdkit.models.loading import DTYPES
    device, dtype = device_and_dtype()
    opdkit.engine.session.load_model = lambda path, dtype="float32", *_layers: random_model(path, DTYPES[dtype], device)
    vocab = json.loads((models / "student" / "arch.json").read_text())["vocab"]
    work.mkdir(parents=True, exist_ok=True)
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompt_texts(64, setting["prompt_words"], vocab)))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    cfg = load_config("distill", overrides=[
        f"model.student={models / 'student'}", f"model.teacher={models / 'teacher'}", f"model.dtype={dtype}",
        f"data.train={data}", f"optim.prompts_per_step={setting['batch']}", f"optim.micro_batch={setting['batch']}",
        f"rollout.max_new_tokens={setting['response']}", "rollout.temperature=1.0", "rollout.top_p=1.0", "optim.lr=1e-6",
        f"optim.steps={setting['steps'] + 1000}", f"objective.name={objective}", "run.progress=false",
        "run.sample_every=0", f"run.out={work / 'run'}", "guard.enabled=false", "run.profile=true"])
    from opdkit.engine.session import build_session
    s = build_session(cfg)
    after_build = {"build_s": time.perf_counter() - t0, **cuda_memory(reset=True)}
    (work / "run").mkdir(exist_ok=True)
    runner = Runner(s, work / "run")          # no start(): the identity self-test is not part of a step
    runner.loop(until=setting["steps"])
    rows = runner.rows
    measured = rows[1:]
    phases = {k[len("time/"):-2]: statistics.median(r[k] for r in measured)
              for k in measured[0] if k.startswith("time/") and k != "time/step_s"}
    return summarise("opdkit", [r["time/step_s"] for r in rows], [r["rollout/tokens"] for r in rows], phases,
                     [r["train/loss"] for r in rows], after_build, cuda_memory(), device, dtype, setting)


def summarise(arm, step_s, tokens, phases, losses, after_build, memory, device, dtype, setting) -> dict:
    wall, toks = step_s[1:], tokens[1:]
    return {"arm": arm, "device": device, "dtype": dtype, "setting": setting, "steps": len(step_s),
            "step_s_all": [round(t, 4) for t in step_s], "median_step_s": statistics.median(wall),
            "tokens_per_step": toks, "tokens_per_s": sum(toks) / sum(wall), "phases_median_s": phases,
            "loss_all": losses, "after_build": after_build, "peak_cuda_gib": memory.get("peak_gib")}


def trl_arm(models: Path, work: Path, setting: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl.experimental.distillation import DistillationConfig, DistillationTrainer

    from opdkit.models.loading import DTYPES
    device, dtype = device_and_dtype()
    vocab = json.loads((models / "student" / "arch.json").read_text())["vocab"]
    tok = AutoTokenizer.from_pretrained(models / "student")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    teacher = random_model(models / "teacher", DTYPES[dtype], device)
    student = random_model(models / "student", DTYPES[dtype], device)
    after_build = {"build_s": time.perf_counter() - t0, **cuda_memory(reset=True)}
    prompts = [[{"role": "user", "content": p}] for p in prompt_texts(64, setting["prompt_words"], vocab)]
    cfg = DistillationConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=setting["batch"], gradient_accumulation_steps=1,
        max_completion_length=setting["response"], beta=1.0, temperature=1.0, use_vllm=False, learning_rate=1e-6,
        max_steps=setting["steps"], logging_steps=1, report_to="none", save_strategy="no", eval_strategy="no",
        bf16=device == "cuda", gradient_checkpointing=False, use_cpu=device == "cpu", dataloader_num_workers=0,
        disable_tqdm=True, seed=42)
    clock = StepClock()
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=Dataset.from_dict(
        {"prompt": prompts}), processing_class=tok, callbacks=[clock.callback(TrainerCallback)])
    for obj, name, phase in ((trainer, "_generate_and_score_completions", "rollout"),
                             (trainer, "_compute_loss", "forward_and_loss"), (trainer.accelerator, "backward", "backward")):
        clock.wrap(obj, name, phase)
    trainer.train()
    steps = sorted(clock.steps)
    phases = {p: statistics.median(clock.steps[s].get(p, 0.0) for s in steps[1:]) for p in clock.phases}
    return summarise("trl", [clock.steps[s]["step_s"] for s in steps], [clock.steps[s].get("tokens", 0) for s in steps],
                     phases, [clock.steps[s].get("loss") for s in steps], after_build, cuda_memory(), device, dtype,
                     setting)


class StepClock:
    """Per-step wall time, phase times (synchronised on CUDA) and completion tokens of a HF Trainer."""

    def __init__(self):
        self.steps: dict[int, dict] = {}
        self.phases: list[str] = []
        self.current = 0

    @staticmethod
    def sync():
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def wrap(self, obj, name: str, phase: str) -> None:
        original = getattr(obj, name, None)
        if original is None:                 # another TRL version: that phase is not split out
            return
        self.phases.append(phase)

        def timed(*a, **k):
            self.sync()
            t0 = time.perf_counter()
            out = original(*a, **k)
            self.sync()
            row = self.steps.setdefault(self.current, {})
            row[phase] = row.get(phase, 0.0) + time.perf_counter() - t0
            if phase == "rollout" and isinstance(out, dict) and "completion_mask" in out:
                row["tokens"] = row.get("tokens", 0) + int(out["completion_mask"].sum())
            return out
        setattr(obj, name, timed)

    def callback(self, base):
        clock = self

        class Callback(base):
            def on_step_begin(self, args, state, control, **kw):
                clock.sync()
                clock.current = state.global_step + 1
                clock.steps.setdefault(clock.current, {})["begin"] = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                clock.sync()
                row = clock.steps[clock.current]
                row["step_s"] = time.perf_counter() - row["begin"]

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs and state.global_step in clock.steps:
                    clock.steps[state.global_step]["loss"] = float(logs["loss"])
        return Callback()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arm", choices=["opdkit", "trl"])
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    setting = DRY if a.dry_run else GPU
    work = a.out.with_suffix("")
    result = opdkit_arm(a.models, work, setting) if a.arm == "opdkit" else trl_arm(a.models, work, setting)
    a.out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
