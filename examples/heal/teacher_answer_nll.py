"""The student's NLL of the teacher's greedy answers (nats per token) on held-out problems: an off-policy measure
of how close a student is to its teacher that a looping student cannot lower by looping (the on-policy KL and the
teacher's NLL of the student's own answers both can: the teacher also predicts a loop once it has started).

    python examples/heal/teacher_answer_nll.py --keep-every 3 runs/warm/opd_alone runs/warm/sft runs/warm/opd \
        --cache runs/warm/teacher_answers.json

The teacher (the full model, fp32) answers each problem greedily once (`--cache` keeps the answers); every
model then scores those answers token by token. Runs load as examples/heal/show_answers.py loads them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from show_answers import trained  # examples/heal/show_answers.py (same directory)

from opdkit.models import checkpoint
from opdkit.models.forward import pack
from opdkit.models.loading import load_model, load_tokenizer
from opdkit.models.rollout import HFSampler
from opdkit.models.teachers import PromptRenderer
from opdkit.tasks.data import batches, load_jsonl


@torch.no_grad()
def answer_nll(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int, batch: int = 8) -> float:
    """Token-mean negative log-likelihood of `responses` given `prompts` under `model` (right padding)."""
    total, count = 0.0, 0
    for rows in batches(list(zip(prompts, responses)), batch):
        packed = pack([p for p, _ in rows], [r for _, r in rows], pad_id)
        logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask).logits
        scoring = logits.gather(1, packed.positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        logp = torch.log_softmax(scoring.float(), -1).gather(-1, packed.response_ids.unsqueeze(-1)).squeeze(-1)
        total -= float((logp * packed.response_mask).sum())
        count += int(packed.response_mask.sum())
    return total / max(count, 1)


def teacher_answers(model_dir: str, tok, prompts: list[list[int]], max_new_tokens: int, cache: Path | None):
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())["responses"]
    model = load_model(model_dir)
    sampler = HFSampler(tok.eos_token_id, tok.pad_token_id)
    responses = []
    for chunk in batches(prompts, 16):
        responses += sampler.sample(model, chunk, max_new_tokens=max_new_tokens, greedy=True).response_ids
    if cache is not None:
        cache.write_text(json.dumps({"model": model_dir, "max_new_tokens": max_new_tokens, "responses": responses}))
    return responses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--model", default="/work/models/smollm2-fp32")
    ap.add_argument("--keep-every", type=int, default=3, help="the untrained student keeps every n-th layer")
    ap.add_argument("--data", default="examples/data/arith_words/heldout_solvable64.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="first N problems (0: all)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--cache", type=Path, default=None, help="JSON file for the teacher's answers")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok, examples = load_tokenizer(args.model), load_jsonl(args.data)
    examples = examples[: args.limit] if args.limit else examples
    prompts = [PromptRenderer(tok)(e) for e in examples]
    responses = teacher_answers(args.model, tok, prompts, args.max_new_tokens, args.cache)
    models = {"teacher (full model)": lambda: load_model(args.model),
              f"student keeping every n-th layer (n = {args.keep_every}), before training":
                  lambda: load_model(args.model, keep_every=args.keep_every)}
    models.update({f"{run.name} {checkpoint.latest(run).name}": (lambda run=run: trained(args.model, run))
                   for run in args.runs})
    tokens = sum(len(r) for r in responses)
    print(f"{len(examples)} problems, {tokens} answer tokens ({tokens / len(examples):.1f} per answer)")
    for name, build in models.items():
        print(f"{name}: NLL of the teacher's greedy answers {answer_nll(build(), prompts, responses, tok.pad_token_id):.3f}",
              flush=True)


if __name__ == "__main__":
    main()
