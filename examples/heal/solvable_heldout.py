"""Keep the held-out arithmetic problems SmolLM2-135M-Instruct solves at least sometimes.

Accuracy of a healed student means something only on problems its teacher can solve: this
script asks the full model each held-out problem greedily and in `--samples` temperature-1
samples, and writes the problems with at least one correct answer (numeric reward: the last
number equals the answer), with the teacher's solve counts, to `--out`.

    python examples/heal/solvable_heldout.py              # ~3 min on 2 shared CPU cores
"""
from __future__ import annotations

import argparse
import json

import torch

from opdkit.models.loading import load_model, load_tokenizer
from opdkit.models.rollout import HFSampler
from opdkit.models.teachers import PromptRenderer
from opdkit.tasks.data import load_jsonl
from opdkit.tasks.rewards import make_reward


def solve_counts(model, tok, examples, samples: int, max_new_tokens: int, seed: int) -> list[tuple[int, int]]:
    """(greedy correct 0/1, correct samples) per example."""
    prompts = [PromptRenderer(tok)(e) for e in examples]
    sampler, reward = HFSampler(tok.eos_token_id, tok.pad_token_id), make_reward("numeric")

    def correct(greedy: bool) -> list[int]:
        out = sampler.sample(model, prompts, max_new_tokens=max_new_tokens, greedy=greedy)
        texts = tok.batch_decode(out.response_ids, skip_special_tokens=True)
        return [int(reward(t, e.answer)) for t, e in zip(texts, examples, strict=True)]

    torch.manual_seed(seed)
    with torch.no_grad():
        greedy = correct(True)
        sampled = [sum(c) for c in zip(*[correct(False) for _ in range(samples)])]
    return list(zip(greedy, sampled))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="examples/data/arith_words/heldout.jsonl")
    ap.add_argument("--out", default="examples/data/arith_words/heldout_solvable.jsonl")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2", help="the teacher: smollm2 or its exported HF directory")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok, model = load_tokenizer(args.model), load_model(args.model)
    examples = load_jsonl(args.data)
    rows = [json.loads(line) for line in open(args.data) if line.strip()]
    counts = solve_counts(model, tok, examples, args.samples, args.max_new_tokens, args.seed)
    kept = [dict(row, teacher_greedy=g, teacher_samples=f"{s}/{args.samples}")
            for row, (g, s) in zip(rows, counts, strict=True) if g or s]
    with open(args.out, "w") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in kept)
    print(f"{len(kept)} of {len(rows)} problems solved at least once; greedy {sum(g for g, _ in counts)}/{len(rows)}; "
          f"samples {sum(s for _, s in counts)}/{len(rows) * args.samples}; written to {args.out}")


if __name__ == "__main__":
    main()
