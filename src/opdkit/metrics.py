"""Metric sinks: jsonl always (namespaced keys such as train/loss, rollout/length), optional trackers.

`MetricLog.truncate_after(step)` rewrites the log so that a resumed run continues it as if
it had never stopped. Events (skipped steps, checkpoints, resumes) go to events.jsonl.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from opdkit.checkpoint import atomic_write_text


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)          # JSON has no nan/inf; keep them visible as strings
    return value


class MetricLog:
    def __init__(self, run_dir: Path, trackers: list[str] = ()):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.events = Path(run_dir) / "events.jsonl"
        self.trackers = [t for t in (_open_tracker(name, run_dir) for name in trackers) if t is not None]

    def log(self, step: int, values: dict) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        for tracker in self.trackers:
            tracker(step, values)

    def samples(self, step: int, texts: list[str]) -> None:
        """The step's decoded responses, for word clouds and reading (samples.jsonl)."""
        with (self.path.parent / "samples.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, "texts": texts}, ensure_ascii=False) + "\n")

    def event(self, step: int, kind: str, **details) -> None:
        with self.events.open("a") as fh:
            fh.write(json.dumps({"step": step, "event": kind, "time": time.time(), **details}) + "\n")

    def move_after(self, step: int, name: str) -> None:
        """Move rows after `step` to `name` (appended): a rolled-back branch is kept, not lost."""
        if not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        later = [line for line in lines if json.loads(line)["step"] > step]
        with (self.path.parent / name).open("a") as fh:
            fh.writelines(line + "\n" for line in later)
        self.truncate_after(step)

    def truncate_after(self, step: int) -> None:
        for path in (self.path, self.path.parent / "samples.jsonl"):
            if path.is_file():
                keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
                atomic_write_text(path, "".join(line + "\n" for line in keep))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _open_tracker(name: str, run_dir: Path):
    """A callable(step, values) for an installed tracker, or None (with a note) when missing."""
    if name == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("opdkit: tensorboard is not installed; metrics go to metrics.jsonl only")
            return None
        writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        return lambda step, values: [writer.add_scalar(k, v, step) for k, v in values.items()
                                     if isinstance(v, (int, float))]
    if name == "wandb":
        try:
            import wandb
        except ImportError:
            print("opdkit: wandb is not installed; metrics go to metrics.jsonl only")
            return None
        run = wandb.init(dir=str(run_dir), project="opdkit")
        return lambda step, values: run.log(values, step=step)
    raise ValueError(f"unknown tracker {name!r}; choose 'tensorboard' or 'wandb'")
