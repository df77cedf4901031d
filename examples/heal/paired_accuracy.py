"""Held-out accuracy of the pruned student before training and of runs' newest checkpoints, paired.

Each model answers every problem of `--data` greedily (fp32, `--max-new-tokens`); the script prints
each accuracy with its 95% Wilson interval and, against the untrained student on the same problems,
the problems lost and gained and McNemar's exact p-value (opdkit.lab.proportions). Per-problem
results go to `--out` (JSON) so other tables can be built from them without rerunning.

    python examples/heal/paired_accuracy.py runs/heal64/topk_rkl_tail runs/heal64/rkl --out runs/heal64/paired.json
    python examples/heal/paired_accuracy.py --keep-every 3 runs/warm/opd_alone runs/warm/opd   # the far student
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from show_answers import answers, trained  # examples/heal/show_answers.py (same directory)

from opdkit.lab.proportions import paired_accuracy, wilson
from opdkit.models import checkpoint
from opdkit.models.loading import load_model, load_tokenizer
from opdkit.tasks.data import load_jsonl
from opdkit.tasks.rewards import make_reward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--model", default="/work/models/smollm2-fp32")
    ap.add_argument("--drop", default="12,13,14,15", help="layers removed for the untrained student")
    ap.add_argument("--keep-every", type=int, default=0, help="build the untrained student from every n-th layer "
                    "instead (3: the far student of RESULTS (b) and issue 18 item 4; --drop is then ignored)")
    ap.add_argument("--data", default="examples/data/arith_words/heldout_solvable64.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="first N problems (0: all)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--teacher", action="store_true", help="answer with the full model too (the filter's "
                    "teacher_greedy field already records its greedy result)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, examples = load_tokenizer(args.model), load_jsonl(args.data)
    examples = examples[: args.limit] if args.limit else examples
    reward = make_reward("numeric")
    drop = [int(i) for i in args.drop.split(",") if i]
    models = {"teacher (full model)": lambda: load_model(args.model)} if args.teacher else {}
    models["student before training"] = lambda: load_model(args.model, keep_every=args.keep_every,
                                                            drop=[] if args.keep_every else drop)
    rows = [json.loads(line) for line in open(args.data) if line.strip()][: len(examples)]
    if not args.teacher and all("teacher_greedy" in r for r in rows):
        k = sum(r["teacher_greedy"] for r in rows)
        print(f"teacher (full model), from the filter: {k}/{len(rows)} greedy", flush=True)
    models.update({f"{run.name} {checkpoint.latest(run).name}": (lambda run=run: trained(args.model, run))
                   for run in args.runs})
    correct = {}
    for name, build in models.items():
        texts = answers(build(), tok, examples, args.max_new_tokens)
        correct[name] = [bool(reward(t, e.answer)) for t, e in zip(texts, examples, strict=True)]
        k, n = sum(correct[name]), len(examples)
        low, high = wilson(k, n)
        line = f"{name}: {k}/{n} = {k / n:.3f} [95% Wilson {low:.3f}, {high:.3f}]"
        if name not in ("teacher (full model)", "student before training"):
            p = paired_accuracy(correct["student before training"], correct[name])
            line += f"; vs before: lost {p['lost']}, gained {p['gained']}, McNemar exact p = {p['p_mcnemar']:.3g}"
        print(line, flush=True)
    if args.out:
        args.out.write_text(json.dumps({"data": args.data, "max_new_tokens": args.max_new_tokens,
                                        "correct": correct}, indent=1))


if __name__ == "__main__":
    main()
