"""Held-out accuracy of an untrained model and of runs' newest checkpoints, paired; rule rates for OPSD.

Each model answers every problem of `--data` greedily (fp32, `--max-new-tokens`); the script prints
each accuracy with its 95% Wilson interval and, against the untrained student on the same problems,
the problems lost and gained and McNemar's exact p-value (opdkit.lab.proportions). Per-problem
results go to `--out` (JSON) so other tables can be built from them without rerunning.

OPSD runs (`--drop ""`: the student is the whole model): `--rule PI CHECK` also answers with the
untrained model given PI (a PI-conditioned teacher; paired against the same model without it) and
reads every model's rule rate with CHECK (`run.check` syntax); a run whose config has `run.check`
is read with that check too. `--base-nll` adds the untrained model's token-mean NLL of each model's
greedy answers, scored on the bare prompt (the teacher with the PI removed).

    python examples/heal/paired_accuracy.py runs/heal64/topk_rkl_tail runs/heal64/rkl --out runs/heal64/paired.json
    python examples/heal/paired_accuracy.py --keep-every 3 runs/warm/opd_alone runs/warm/opd   # the far student
    python examples/heal/paired_accuracy.py --drop "" --base-nll --rule "Begin every answer with 'Sure!'" 'regex:^\\s*Sure!'
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from show_answers import trained, untrained  # examples/heal/show_answers.py (same directory): recipe hand-offs too
from teacher_answer_nll import answer_nll  # the token-mean NLL of given answers (same directory)

from opdkit.lab.proportions import paired_accuracy, wilson
from opdkit.models import checkpoint
from opdkit.models.loading import load_model, load_tokenizer
from opdkit.models.rollout import HFSampler
from opdkit.models.teachers import PromptRenderer
from opdkit.tasks.data import load_jsonl
from opdkit.tasks.rewards import make_check, make_reward

BASE = "student before training"


def run_check(run: Path) -> str:
    """The run's `run.check` ('' when it has none)."""
    return (yaml.safe_load((run / "config.yaml").read_text()).get("run") or {}).get("check") or ""


@torch.no_grad()
def greedy(model, tok, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy response ids (EOS included when the answer ended) for each prompt."""
    out = HFSampler(tok.eos_token_id, tok.pad_token_id).sample(model, prompts, max_new_tokens=max_new_tokens,
                                                                 greedy=True)
    return out.response_ids


def plan(args, tok, examples) -> dict:
    """name -> (build the model, its prompts, the checks to read its answers with)."""
    bare = [PromptRenderer(tok, args.system)(e) for e in examples]
    rules = {f"rule {i + 1}": check for i, (_, check) in enumerate(args.rule)}
    drop = [int(i) for i in args.drop.split(",") if i]
    models = {"teacher (full model)": (lambda: load_model(args.model), bare, rules)} if args.teacher else {}
    before = lambda: untrained(args.model, args.keep_every, drop)  # noqa: E731
    models[BASE] = (before, bare, rules)
    for i, (pi, check) in enumerate(args.rule):
        with_pi = [PromptRenderer(tok, args.system, pi, args.pi_placement, with_pi=True)(e) for e in examples]
        models[f"untrained with rule {i + 1} as PI"] = (before, with_pi,
                                                         {f"rule {i + 1}": check})
    for run in args.runs:
        checks = {**rules, **({"run.check": run_check(run)} if run_check(run) else {})}
        models[f"{run.name} {checkpoint.latest(run).name}"] = (lambda run=run: trained(args.model, run), bare, checks)
    return models


def describe(name: str, correct: dict, rule_hits: dict, nll: dict) -> str:
    k, n = sum(correct[name]), len(correct[name])
    low, high = wilson(k, n)
    line = f"{name}: {k}/{n} = {k / n:.3f} [95% Wilson {low:.3f}, {high:.3f}]"
    if name not in ("teacher (full model)", BASE):
        p = paired_accuracy(correct[BASE], correct[name])
        line += f"; vs before: lost {p['lost']}, gained {p['gained']}, McNemar exact p = {p['p_mcnemar']:.3g}"
    for rule, hits in rule_hits.get(name, {}).items():
        line += f"; {rule} rate {sum(hits)}/{n} = {sum(hits) / n:.3f}"
    if name in nll:
        line += f"; base-model NLL of its answers (bare prompt) {nll[name]:.3f}"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--model", default="/work/models/smollm2-fp32")
    ap.add_argument("--drop", default="12,13,14,15", help="layers removed for the untrained student ('' for none)")
    ap.add_argument("--keep-every", type=int, default=0, help="build the untrained student from every n-th layer "
                    "instead (3: the far student of RESULTS (b) and issue 18 item 4; --drop is then ignored)")
    ap.add_argument("--data", default="examples/data/arith_words/heldout_solvable64.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="first N problems (0: all)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--teacher", action="store_true", help="answer with the full model too (the filter's "
                    "teacher_greedy field already records its greedy result)")
    ap.add_argument("--rule", nargs=2, action="append", default=[], metavar=("PI", "CHECK"),
                    help="answer with the untrained model given PI too; read rule rates with CHECK (repeatable)")
    ap.add_argument("--pi-placement", default="user", choices=("user", "user_end", "system"))
    ap.add_argument("--system", default="", help="data.system_prompt for every model ('': the template's default)")
    ap.add_argument("--base-nll", action="store_true", help="the untrained model's NLL of each model's answers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for _, spec in args.rule:                 # a bad check fails before any model loads
        try:
            make_check(spec)
        except ValueError as err:
            ap.error(f"--rule {spec!r}: {err}")
    tok, examples = load_tokenizer(args.model), load_jsonl(args.data)
    examples = examples[: args.limit] if args.limit else examples
    reward = make_reward("numeric")
    rows = [json.loads(line) for line in open(args.data) if line.strip()][: len(examples)]
    if not args.teacher and all("teacher_greedy" in r for r in rows):
        print(f"teacher (full model), from the filter: {sum(r['teacher_greedy'] for r in rows)}/{len(rows)} greedy",
              flush=True)
    bare = [PromptRenderer(tok, args.system)(e) for e in examples]
    base_model = load_model(args.model) if args.base_nll else None
    correct, rule_hits, nll, texts_out = {}, {}, {}, {}
    for name, (build, prompts, checks) in plan(args, tok, examples).items():
        ids = greedy(build(), tok, prompts, args.max_new_tokens)
        texts = tok.batch_decode(ids, skip_special_tokens=True)
        texts_out[name] = texts
        correct[name] = [bool(reward(t, e.answer)) for t, e in zip(texts, examples, strict=True)]
        rule_hits[name] = {rule: [bool(make_check(spec)(t)) for t in texts] for rule, spec in checks.items()}
        if base_model is not None:
            nll[name] = answer_nll(base_model, bare, ids, tok.pad_token_id)
        print(describe(name, correct, rule_hits, nll), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"data": args.data, "max_new_tokens": args.max_new_tokens,
                                        "rules": [{"pi": pi, "check": c} for pi, c in args.rule],
                                        "correct": correct, "rule_hits": rule_hits, "base_nll": nll,
                                        "answers": texts_out}, indent=1))


if __name__ == "__main__":
    main()
