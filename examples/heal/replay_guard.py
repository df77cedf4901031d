"""What the guard would have said on finished runs: replay its rules over each run's metrics.jsonl.

The default rules (or `--only NAME ...` of them, or `--rules JSON` written like guard.rules) watch the
logged rows in order, acting on none (`opdkit.engine.guard.replay`); each alarm is printed with its step,
value and baseline, and every eval/ metric a rule watches is printed as its trajectory. A run that rolled
back keeps only its surviving rows in metrics.jsonl, so its replay is of those.

    python examples/heal/replay_guard.py runs/heal64c/* --only eval_repeat
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from opdkit.engine.guard import Guard, describe_alarm, replay
from opdkit.engine.metrics import read_metrics


def guard_for(only: list[str], rules: str) -> Guard:
    guard = Guard.from_config(json.loads(rules) if rules else [])
    if only:
        guard.rules = [r for r in guard.rules if r.name in only]
    return guard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.jsonl)")
    parser.add_argument("--only", nargs="*", default=[], help="keep only these rules")
    parser.add_argument("--rules", default="", help="extra rules as JSON (a default's name replaces it)")
    args = parser.parse_args()
    for run_dir in args.runs:
        if not (run_dir / "metrics.jsonl").is_file():
            continue
        guard = guard_for(args.only, args.rules)
        rows = read_metrics(run_dir / "metrics.jsonl")
        print(f"{run_dir}:")
        for metric in sorted({r.watched for r in guard.rules if r.watched.startswith("eval/")}):
            trail = ", ".join(f"{row['step']}: {row[metric]:.3f}" for row in rows if metric in row)
            print(f"  {metric} by step: {trail}")
        alarms = replay(guard, rows)
        for alarm in alarms:
            print(f"  {describe_alarm(alarm)}")
        if not alarms:
            print("  no alarm")


if __name__ == "__main__":
    main()
