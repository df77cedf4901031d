"""TRL's GKDTrainer with lmbda = 1 (always on-policy) as a third arm of opd_step_vs_trl.py.

    python benchmarks/trl_gkd_arm.py --beta 1.0 --steps 8 --out FILE.json

The anchor's setting (../shared/anchors/common.py): teacher SmolLM2-135M fp32 from
$SMOL_HF_DIR, student = its layers 0, 3, ..., 27, the 64 arithmetic prompts, batch 4, 64
new tokens at T = 1, lr 1e-6, no gradient checkpointing, fp32. GKD's collator wants a chat
with an assistant turn; with lmbda = 1 that turn is always replaced by the student's own
sample, so it is a placeholder. Timing is by Trainer callbacks only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--anchors", type=Path, default=ANCHORS)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    sys.path.insert(0, str(args.anchors))
    import torch
    from common import arithmetic_prompts, load_student, load_teacher, load_tokenizer, rss_now_mib, rss_peak_mib
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    rss0 = rss_peak_mib()
    tok, teacher, student = load_tokenizer(), load_teacher(), load_student()
    rss_models = rss_now_mib()
    chats = [chat + [{"role": "assistant", "content": "0"}] for chat in arithmetic_prompts(64)]
    cfg = GKDConfig(output_dir=str(args.out.with_suffix("")), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                    max_new_tokens=64, lmbda=1.0, beta=args.beta, temperature=1.0, learning_rate=1e-6,
                    max_steps=args.steps, logging_steps=1, report_to="none", save_strategy="no", eval_strategy="no",
                    bf16=False, gradient_checkpointing=False, use_cpu=True, dataloader_num_workers=0,
                    disable_tqdm=True, seed=42)
    steps, tokens, losses = {}, {}, {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            steps[state.global_step + 1] = [time.perf_counter()]

        def on_step_end(self, a, state, control, **kw):
            steps[state.global_step].append(time.perf_counter())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses[state.global_step] = logs["loss"]

    trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=Dataset.from_dict({"messages": chats}),
                         processing_class=tok, callbacks=[Clock()])
    original = trainer.generate_on_policy_outputs

    def counted(model, inputs, generation_config):
        ids, attention, labels = original(model, inputs, generation_config)
        tokens[len(steps)] = int((labels != -100).sum())
        return ids, attention, labels
    trainer.generate_on_policy_outputs = counted
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    order = sorted(steps)
    ends = {s: steps[s][1] for s in order}
    wall = {s: ends[s] - (ends[s - 1] if s - 1 in ends else steps[s][0]) for s in order}
    measured = order[1:]
    summary = {
        "tag": f"trl_gkd_beta{args.beta}", "beta": args.beta, "steps": len(order), "steps_measured": len(measured),
        "median_step_wall_s": statistics.median(wall[s] for s in measured),
        "step_wall_s_all": [round(wall[s], 3) for s in order],
        "completion_tokens_per_step": [tokens.get(s) for s in measured],
        "tokens_per_s_step": sum(tokens[s] for s in measured) / sum(wall[s] for s in measured),
        "loss_all": [losses.get(s) for s in order], "final_loss": losses.get(order[-1]),
        "rss_baseline_mib_before_models": rss0, "rss_after_models_mib": rss_models, "peak_rss_mib": rss_peak_mib(),
        "train_runtime_s": train_s, "torch_threads": torch.get_num_threads(),
    }
    args.out.write_text(json.dumps({"summary": summary}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
