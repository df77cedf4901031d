"""The `opdkit` command line.

    opdkit objectives                       every objective, its teacher needs and fixed point
    opdkit config                           every config key with its default and doc
    opdkit sft | distill | self-distill | grpo [--config FILE] [--resume] [key=value ...]
    opdkit eval [--config FILE] [key=value ...]          accuracy, length, rule rate, teacher KL
    opdkit preflight [--config FILE] [key=value ...]     pair checks + identity self-test, no training
    opdkit probe pair|prefix|pi [--config FILE] [key=value ...]   can this run work? numbers + verdict
    opdkit recipe FILE.yaml [--resume] [--out DIR] [--only S,..]  chained sft/grpo/distill/self-distill/eval stages
    opdkit task arithmetic --n N --out DIR  procedural word problems: DIR/train.jsonl, DIR/heldout.jsonl
    opdkit export RUN_DIR --out DIR         the newest checkpoint as a Hugging Face model directory
    opdkit report RUN_DIR [RUN_DIR ...] [--out report.html]   curves, alarms, word clouds, probes, config
    opdkit plot RUN_DIR                     metrics.png: loss, length, held-out KL / rule rate / accuracy
    opdkit lab fixed-points --out DIR       gradient descent on logits: each objective's fixed point
    opdkit lab sweep --out DIR              OPD objectives x starting students on the tiny testbed
    opdkit lab prefix-source --out DIR      the Decoupling 2x2 (prefix source x KL direction) and a mixture
    opdkit lab reproduce [--quick] [--only C1,C4] --out DIR   the paper's claims: table, claims.json, report.html

Errors in user input (config, data, models, checkpoints) print one message and exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from opdkit.analysis.plots import plot_run
from opdkit.analysis.probes import PROBES, format_probe
from opdkit.analysis.report import build_report
from opdkit.engine.config import field_docs, load_config, read_yaml
from opdkit.engine.evaluate import evaluate_session, identity_self_test, sample_answers
from opdkit.engine.export import export_run
from opdkit.engine.runner import run
from opdkit.engine.session import build_session
from opdkit.errors import USER_ERRORS, ConfigError, Interrupted, UsageError, no_room
from opdkit.lab import fixed_points, prefix_source, reproduce, sweep
from opdkit.models import checkpoint
from opdkit.objectives import describe
from opdkit.recipes.recipe import load_recipe, run_recipe
from opdkit.tasks.arithmetic import write_task


def _objectives(args: argparse.Namespace) -> int:
    print(describe())
    return 0


def _lab_fixed_points(args: argparse.Namespace) -> int:
    for flag, value in (("--positions", args.positions), ("--vocab", args.vocab), ("--k", args.k), ("--steps", args.steps)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.k >= args.vocab:
        raise UsageError(f"--k {args.k} must be smaller than --vocab {args.vocab} (the top-K needs a tail)")
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    # thousands of tiny (positions x vocab) ops: with two intra-op threads on a 2-core machine whose
    # other core is busy, each op waited on the OMP barrier (239 s measured, 13.7 s with one thread)
    torch.set_num_threads(1)
    rows = fixed_points.run(args.out, positions=args.positions, vocab=args.vocab, k=args.k,
                            steps=args.steps, lr=args.lr, seed=args.seed)
    print(fixed_points.format_table(rows))
    if args.out is not None:
        print(f"\nwrote {args.out / 'fixed_points.json'} and {args.out / 'fixed_points.png'}")
    return 0 if all(r["verdict"] == "as derived" for r in rows) else 1


def _config(args: argparse.Namespace) -> int:
    for key, default, text in field_docs():
        print(f"{key:<28} {default!r:<24} {text}")
    return 0


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + (["run.profile=true"] if args.profile else [])
    cfg = load_config(args.command, args.config, overrides)
    rows = run(cfg, resume=args.resume)
    if rows and os.environ.get("RANK", "0") == "0":       # under torchrun, rank 0 speaks
        last = rows[-1]
        print(f"step {last['step']}: loss {last['train/loss']:.4f}, length {last['rollout/length_mean']:.1f}; "
              f"run directory {cfg.run.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json
    cfg = load_config(args.mode, args.config, args.overrides, need_train=False)
    if not cfg.data.eval:
        raise ConfigError("eval needs data.eval (a JSONL file of held-out prompts)")
    session = build_session(cfg, load_train=False)
    if args.checkpoint is not None:
        path = args.checkpoint if (args.checkpoint / "state.pt").is_file() else checkpoint.latest(args.checkpoint)
        if path is None:
            raise checkpoint.CheckpointError(f"{args.checkpoint} holds no complete checkpoint")
        checkpoint.load(path, {"student": session.student})
        print(f"student weights from {path}", file=sys.stderr)
    result = evaluate_session(session, teacher_side=args.teacher_side)
    if args.show:
        result["samples"] = [{"prompt": p, "answer": a} for p, a in sample_answers(session, args.show)]
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _preflight(args: argparse.Namespace) -> int:
    cfg = load_config(args.mode, args.config, args.overrides)
    s = build_session(cfg)
    print(f"vocabulary: {s.vocab} ids scored; prompts: {len(s.items)} kept, {s.skipped_prompts} over the limit")
    members = getattr(s.teacher, "members", None)
    if members:               # each was preflighted against the student; their problems name the teacher
        print(f"teachers ({s.teacher.combine}): {', '.join(members)}, each preflighted against the student")
    for note in s.report.notes:
        print(f"note: {note}")
    kl = identity_self_test(s)
    print(f"identity self-test (student vs itself through the teacher path): KL {kl:.2e} "
          f"{'ok' if kl < 1e-4 else 'FAILED'}")
    return 0 if kl < 1e-4 else 1


def _plot(args: argparse.Namespace) -> int:
    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    print(f"wrote {export_run(args.run_dir, args.out, args.checkpoint)}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    import json
    session = build_session(load_config(_probe_mode(args), args.config, args.overrides))
    result = PROBES[args.probe](session, prompts=args.prompts)
    print(format_probe(args.probe, result))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"probe_{args.probe}.json"
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")
    return 0


def _probe_mode(args: argparse.Namespace) -> str:
    """--mode, else distill; `probe pi` probes self-distill's self-teacher unless several teachers are set."""
    if args.mode or args.probe != "pi":
        return args.mode or "distill"
    keys = [text.split("=", 1)[0].strip() for text in args.overrides]
    tree = (read_yaml(args.config) or {}) if args.config is not None and args.config.is_file() else {}
    several = "model.teachers" in keys or bool(isinstance(tree, dict) and (tree.get("model") or {}).get("teachers"))
    return "distill" if several else "self-distill"


def _report(args: argparse.Namespace) -> int:
    print(f"wrote {build_report(args.run_dirs, args.out)}")
    return 0


def _recipe(args: argparse.Namespace) -> int:
    only = [name for name in (args.only or "").split(",") if name]
    run_recipe(load_recipe(args.file, args.out), resume=args.resume, only=only or None)
    return 0


def _task(args: argparse.Namespace) -> int:
    train, heldout = write_task(args.out, args.n, args.n_heldout, args.heldout, args.seed, args.max_operand)
    print(f"wrote {train} and {heldout}")
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML config (sections model:, data:, optim:, ...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-5")


def _lab_sweep(args: argparse.Namespace) -> int:
    print(sweep.format_table(sweep.run_sweep(args.out, steps=args.steps)))
    print(f"\nwrote {args.out / 'sweep.json'}")
    return 0


def _lab_prefix_source(args: argparse.Namespace) -> int:
    print(prefix_source.format_table(prefix_source.run_experiment(args.out, seeds=args.seeds, steps=args.steps)))
    print(f"\nwrote {args.out / 'prefix_source.json'}")
    return 0


def _lab_reproduce(args: argparse.Namespace) -> int:
    try:
        reproduce.select(args.only)
    except ValueError as e:
        raise UsageError(f"--only: {e}") from None
    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
    rows = reproduce.reproduce(args.out, quick=args.quick, only=args.only, seeds=args.seeds)
    print(reproduce.format_table(rows))
    print(f"\nwrote {args.out / 'claims.json'} and {args.out / 'report.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opdkit", description="On-policy distillation toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_tool_commands(sub)
    _add_lab_commands(sub.add_parser("lab", help="the miniature testbed").add_subparsers(dest="experiment", required=True))
    return parser


def _add_run_commands(sub) -> None:
    """objectives, config, the four training commands, eval, preflight, probe."""
    p = sub.add_parser("objectives", help="list every objective with its fixed point")
    p.set_defaults(func=_objectives)
    p = sub.add_parser("config", help="list every config key with its default and doc")
    p.set_defaults(func=_config)
    helps = {"sft": "supervised fine-tuning on given or teacher-written responses",
             "distill": "on-policy distillation from a teacher model (OPD)",
             "self-distill": "on-policy self-distillation with privileged information (OPSD)",
             "grpo": "GRPO with a verifiable reward"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        _add_run_args(p)
        p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run.out")
        p.add_argument("--profile", action="store_true",
                       help="print where each step's time went (rollout, teacher, forward, backward, optimizer, ...)")
        p.set_defaults(func=_train)
    for name, fn, text in (("eval", _eval, "evaluate the student on data.eval"),
                           ("preflight", _preflight, "check the pair and the scoring path without training")):
        p = sub.add_parser(name, help=text)
        _add_run_args(p)
        if name == "eval":
            p.add_argument("--teacher-side", action="store_true", help="also measure the teacher on its own prompts")
            p.add_argument("--checkpoint", type=Path, default=None,
                           help="a checkpoint directory, or a run directory (its newest checkpoint), to evaluate")
            p.add_argument("--show", type=int, default=0, help="also print this many greedy answers")
        p.add_argument("--mode", default="sft" if name == "eval" else "distill",
                       choices=["sft", "distill", "self-distill", "grpo"],
                       help="which teacher to build (model.teacher when set; self-distill: the student with PI)")
        p.set_defaults(func=fn)

    p = sub.add_parser("probe", help="measure before training whether a run can work: pair, prefix, pi")
    p.add_argument("probe", choices=["pair", "prefix", "pi"])
    _add_run_args(p)
    p.add_argument("--mode", default=None, choices=["distill", "self-distill"],
                   help="teacher to build (default: distill; self-distill for `pi` unless model.teachers is set)")
    p.add_argument("--prompts", type=int, default=16, help="prompts to probe with")
    p.add_argument("--out", type=Path, default=None, help="also write probe_<name>.json here (the report reads it)")
    p.set_defaults(func=_probe)


def _add_tool_commands(sub) -> None:
    """report, plot, recipe, task, export."""
    p = sub.add_parser("report", help="one self-contained HTML page: curves, alarms, word clouds, probes, config")
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("report.html"))
    p.set_defaults(func=_report)

    p = sub.add_parser("plot", help="plot a run directory's metrics.jsonl")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="image path (default RUN_DIR/metrics.png)")
    p.set_defaults(func=_plot)

    p = sub.add_parser("recipe", help="run a recipe: stages with hand-offs, switch criteria and resume")
    p.add_argument("file", type=Path)
    p.add_argument("--resume", action="store_true", help="skip finished stages; resume the unfinished one")
    p.add_argument("--out", default=None, help="run directory (default: the recipe's `out`)")
    p.add_argument("--only", default=None, metavar="STAGE[,STAGE]",
                   help="run only these stages (their hand-offs must be finished or listed too); with --resume "
                        "a later call runs the others in the same directory")
    p.set_defaults(func=_recipe)

    p = sub.add_parser("task", help="write a procedurally generated task with train and held-out splits")
    p.add_argument("task", choices=["arithmetic"])
    p.add_argument("--n", type=int, default=2000, help="training problems")
    p.add_argument("--n-heldout", type=int, default=None, help="held-out problems (default max(32, n/10))")
    p.add_argument("--heldout", default="pairs", choices=["pairs", "templates"],
                   help="held-out operand pairs (same templates) or held-out templates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-operand", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_task)

    p = sub.add_parser("export", help="write a run's newest checkpoint as a Hugging Face model directory")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--checkpoint", type=Path, default=None, help="a specific checkpoint directory (default: newest)")
    p.set_defaults(func=_export)


def _add_lab_commands(lab) -> None:
    p = lab.add_parser("fixed-points", help="descend each objective on free logits; compare with MATH.md")
    p.add_argument("--out", type=Path, default=Path("runs/fixed-points"), help="output directory")
    p.add_argument("--positions", type=int, default=64, help="independent positions (rows)")
    p.add_argument("--vocab", type=int, default=100, help="vocabulary size")
    p.add_argument("--k", type=int, default=5, help="top-K support size")
    p.add_argument("--steps", type=int, default=3000, help="Adam steps")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_lab_fixed_points)
    p = lab.add_parser("reproduce", help="the paper's claims C1-C11 (+ C12, OPSD self-teachers) on the tiny testbeds: "
                                         "table, claims.json, report.html")
    p.add_argument("--out", type=Path, default=Path("runs/lab"), help="output directory (models are cached in OUT/cache)")
    p.add_argument("--quick", action="store_true", help="one seed, shorter runs (<= 10 min on 2 cores)")
    p.add_argument("--only", default=None, help="comma-separated claims, e.g. C1,C4")
    p.add_argument("--seeds", type=int, default=None, help="seeds (default: 1 quick, 3 full)")
    p.set_defaults(func=_lab_reproduce)
    p = lab.add_parser("sweep", help="OPD objectives x starting students on the tiny testbed (CPU, ~2 min)")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"), help="output directory")
    p.add_argument("--steps", type=int, default=150, help="OPD steps per run")
    p.set_defaults(func=_lab_sweep)
    p = lab.add_parser("prefix-source", help="the Decoupling 2x2 (teacher/student prefixes x FKL/RKL) and a mixture "
                                             "on the tiny testbed (CPU, a few minutes)")
    p.add_argument("--out", type=Path, default=Path("runs/prefix-source"), help="output directory")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell")
    p.add_argument("--steps", type=int, default=60, help="distillation steps per run")
    p.set_defaults(func=_lab_prefix_source)


def _quiet_transformers() -> None:
    """Keep the console for opdkit's own progress: no per-load progress bars or info chatter."""
    try:
        from transformers.utils import logging
    except ImportError:
        return
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("objectives", "config"):
        _quiet_transformers()
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"opdkit: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as e:       # 130: the shell's code for a run ended by SIGINT
        print(f"opdkit: {one_line(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except OSError as e:
        if no_room(e) is None:
            raise
        print(f"opdkit: error: {no_room(e)} while writing {e.filename or 'a file'}; free space "
              f"(or raise the limit) and rerun (training: add --resume)", file=sys.stderr)
        return 2


def one_line(e: BaseException) -> str:
    """The message on one line: a multi-line message (the pair preflight's list) joined with '; '."""
    parts = [part.strip() for part in str(e).splitlines() if part.strip()]
    return "; ".join(part[2:] if part.startswith("- ") else part for part in parts)


if __name__ == "__main__":
    sys.exit(main())
