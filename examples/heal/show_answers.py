"""Greedy answers to the first held-out problems: the full model, the pruned student, and trained runs.

    python examples/heal/show_answers.py runs/heal/topk_rkl_tail runs/heal/topk_rkl_unnorm --n 4

Each run's newest checkpoint is loaded into a student built as its config says (layers removed).

    python examples/heal/show_answers.py --model /work/models/smollm2-fp32 --keep-every 3 \
        --data examples/data/arith_words/heldout_solvable64.jsonl --max-new-tokens 64 runs/warm/opd_alone runs/warm/opd
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from opdkit.models import checkpoint
from opdkit.models.loading import load_model, load_tokenizer
from opdkit.models.rollout import HFSampler
from opdkit.models.teachers import PromptRenderer
from opdkit.tasks.data import load_jsonl


def answers(model, tok, examples, max_new_tokens: int) -> list[str]:
    prompts = [PromptRenderer(tok)(e) for e in examples]
    with torch.no_grad():
        out = HFSampler(tok.eos_token_id, tok.pad_token_id).sample(model, prompts, max_new_tokens=max_new_tokens,
                                                                     greedy=True)
    return tok.batch_decode(out.response_ids, skip_special_tokens=True)


def trained(model_dir: str, run: Path):
    """The run's newest checkpoint in a student built as its config says; a student handed off by a recipe
    stage (an exported, already-pruned directory) is built from that directory, not from `model_dir`."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())["model"]
    own = cfg.get("student") or ""
    model_dir = own if own != model_dir and (Path(own) / "config.json").is_file() else model_dir
    model = load_model(model_dir, keep_every=cfg.get("drop_layers_every") or 0, drop=cfg.get("drop_layers") or [])
    checkpoint.load(checkpoint.latest(run), {"student": model})
    return model


def untrained(model_dir: str, keep_every: int, drop: list[int]):
    """The student before training: every `keep_every`-th layer when that is set, else without `drop`."""
    return load_model(model_dir, keep_every=keep_every) if keep_every else load_model(model_dir, drop=drop)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--model", default="runs/smollm2-fp32")
    ap.add_argument("--drop", default="12,13,14,15", help="layers removed for the untrained student ('' for none)")
    ap.add_argument("--keep-every", type=int, default=0, help="the untrained student keeps every n-th layer "
                    "instead (3: the far student); --drop is then ignored")
    ap.add_argument("--data", default="examples/data/arith_words/heldout_solvable.jsonl")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok, examples = load_tokenizer(args.model), load_jsonl(args.data)[: args.n]
    drop = [int(i) for i in args.drop.split(",") if i]
    models = {"full model (the teacher), no PI": lambda: load_model(args.model)}
    if args.keep_every or drop:
        cut = f"keeping every n-th layer (n = {args.keep_every})" if args.keep_every else f"without layers {drop}"
        models[f"student {cut}, before training"] = lambda: untrained(args.model, args.keep_every, drop)
    for run in args.runs:
        models[f"{run.name}, {checkpoint.latest(run).name}"] = lambda run=run: trained(args.model, run)
    for name, build in models.items():
        print(f"\n## {name}")
        for example, text in zip(examples, answers(build(), tok, examples, args.max_new_tokens), strict=True):
            print(f"- {example.prompt!r} (answer {example.answer}) -> {text!r}")


if __name__ == "__main__":
    main()
