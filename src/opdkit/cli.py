"""The `opdkit` command line.

    opdkit objectives                       every objective, its teacher needs and fixed point
    opdkit lab fixed-points --out DIR       gradient descent on logits: each objective's fixed point
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _objectives(args: argparse.Namespace) -> int:
    from opdkit.objectives import describe
    print(describe())
    return 0


def _lab_fixed_points(args: argparse.Namespace) -> int:
    from opdkit.lab import fixed_points
    rows = fixed_points.run(args.out, positions=args.positions, vocab=args.vocab, k=args.k,
                            steps=args.steps, lr=args.lr, seed=args.seed)
    print(fixed_points.format_table(rows))
    if args.out is not None:
        print(f"\nwrote {args.out / 'fixed_points.json'} and {args.out / 'fixed_points.png'}")
    return 0 if all(r["verdict"] == "as derived" for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opdkit", description="On-policy distillation toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("objectives", help="list every objective with its fixed point")
    p.set_defaults(func=_objectives)

    lab = sub.add_parser("lab", help="the miniature testbed").add_subparsers(dest="experiment", required=True)
    p = lab.add_parser("fixed-points", help="descend each objective on free logits; compare with MATH.md")
    p.add_argument("--out", type=Path, default=Path("runs/fixed-points"), help="output directory")
    p.add_argument("--positions", type=int, default=64, help="independent positions (rows)")
    p.add_argument("--vocab", type=int, default=100, help="vocabulary size")
    p.add_argument("--k", type=int, default=5, help="top-K support size")
    p.add_argument("--steps", type=int, default=3000, help="Adam steps")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_lab_fixed_points)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
