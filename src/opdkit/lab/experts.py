"""Two experts for the addition testbed: each knows half the sums (routing several teachers).

`build_experts(root)` trains, from the testbed's random init, `expert_even/` by SFT on the
sums whose answer is even and `expert_odd/` on those whose answer is odd, and writes
`routed.jsonl` (every sum with `teacher: even|odd`) and `half_even.jsonl` / `half_odd.jsonl`.
An expert never saw an answer of the other parity, so alone it teaches the wrong half wrongly.
`greedy_accuracy` measures a model directory on a task file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from opdkit.engine.config import load_config
from opdkit.engine.export import export_run
from opdkit.engine.runner import run
from opdkit.models.loading import load_model, load_tokenizer
from opdkit.models.rollout import HFSampler
from opdkit.tasks.data import load_jsonl, messages, render
from opdkit.tasks.rewards import make_reward

HALVES = ("even", "odd")


def half_of(answer: str) -> str:
    return HALVES[int(answer) % 2]


def build_experts(root: Path, sft_steps: int = 200, seed: int = 0) -> dict[str, Path]:
    """Expert model directories by half, trained in `root` (a built testbed); cached by a marker."""
    root = Path(root)
    paths = {half: root / f"expert_{half}" for half in HALVES}
    marker, spec = root / "experts.json", {"sft_steps": sft_steps, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return paths
    rows = [json.loads(line) for line in (root / "task.jsonl").read_text().splitlines()]
    (root / "routed.jsonl").write_text("".join(json.dumps({**r, "teacher": half_of(r["answer"])}) + "\n" for r in rows))
    for half in HALVES:
        mine = [r for r in rows if half_of(r["answer"]) == half]
        (root / f"half_{half}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine))
        out = root / f"expert_{half}_run"
        shutil.rmtree(out, ignore_errors=True)
        run(load_config("sft", overrides=[
            f"model.student={root / 'init'}", f"data.train={root / f'half_{half}.jsonl'}", f"run.out={out}",
            f"optim.steps={sft_steps}", "optim.prompts_per_step=16", "optim.micro_batch=16", "optim.lr=3e-3",
            "rollout.max_new_tokens=4", f"run.save_every={sft_steps}", "run.progress=false", "guard.enabled=false",
            f"run.seed={seed}", "run.threads=1"]))
        export_run(out, paths[half])
    marker.write_text(json.dumps(spec))
    return paths


@torch.no_grad()
def greedy_accuracy(model_dir: Path, task: Path, max_new_tokens: int = 4) -> float:
    """Share of the task's prompts whose greedy answer's last number equals the answer."""
    tokenizer, model = load_tokenizer(str(model_dir)), load_model(str(model_dir), "float32").eval()
    examples = load_jsonl(task)
    prompts = [render(tokenizer, messages(e.prompt)) for e in examples]
    out = HFSampler(tokenizer.eos_token_id, tokenizer.pad_token_id).sample(model, prompts, max_new_tokens=max_new_tokens,
                                                                           greedy=True)
    texts = tokenizer.batch_decode(out.response_ids, skip_special_tokens=True)
    reward = make_reward("numeric")
    return sum(reward(t, e.answer) for t, e in zip(texts, examples)) / len(examples)
