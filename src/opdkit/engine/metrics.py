"""Metric sinks: jsonl always (namespaced keys such as train/loss, rollout/length), optional trackers.

`MetricLog.truncate_after(step)` rewrites the log so that a resumed run continues it as if
it had never stopped. Events (skipped steps, checkpoints, resumes) go to events.jsonl.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from opdkit.errors import RunDirError
from opdkit.models.checkpoint import atomic_write_text


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)          # JSON has no nan/inf; keep them visible as strings
    return value


class MetricLog:
    def __init__(self, run_dir: Path, trackers: list[str] = ()):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.events = Path(run_dir) / "events.jsonl"
        # a kill mid-write leaves an unterminated line that the next row would join: cut every
        # file's tail first, then record what was cut (the record itself goes to events.jsonl)
        names = (self.path.name, self.events.name, "samples.jsonl", "abandoned.jsonl")
        dropped = {name: repair_tail(Path(run_dir) / name) for name in names}
        for name, text in dropped.items():
            if text:
                warn(f"{Path(run_dir) / name}: dropped a torn last line ({len(text)} bytes, a write cut short: "
                     f"{text[:60]!r})")
                self.event(0, "torn_line_dropped", file=name, text=text[:200])
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
        later = [line for line, row in _lines_and_rows(self.path) if row is not None and row["step"] > step]
        with (self.path.parent / name).open("a") as fh:
            fh.writelines(line + "\n" for line in later)
        self.truncate_after(step)

    def truncate_after(self, step: int) -> None:
        for path in (self.path, self.path.parent / "samples.jsonl"):
            if path.is_file():
                keep = [line for line, row in _lines_and_rows(path) if row is not None and row["step"] <= step]
                atomic_write_text(path, "".join(line + "\n" for line in keep))


def warn(text: str) -> None:
    import sys
    print(f"opdkit: warning: {text}", file=sys.stderr)


def repair_tail(path: Path) -> str:
    """Cut an unterminated last line (a write cut short by a kill) off `path`; returns what was cut."""
    if not path.is_file():
        return ""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return ""
    cut = data.rfind(b"\n") + 1
    atomic_write_text(path, data[:cut].decode("utf-8", errors="replace"))
    return data[cut:].decode("utf-8", errors="replace")


def parse_rows(path: Path, lines: list[str]) -> list[dict | None]:
    """json rows; a torn last line becomes None (with a warning); a bad line elsewhere is an error."""
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines):
                raise RunDirError(f"{path}:{i}: not valid JSON ({e.msg} at column {e.pos + 1}); "
                                  f"delete or repair that line") from None
            warn(f"{path}: ignoring a torn last line (a write cut short): {line[:60]!r}")
            rows.append(None)
    return rows


def _lines_and_rows(path: Path) -> list[tuple[str, dict | None]]:
    """Each non-blank line of a jsonl log with its parsed row (None for a torn last line)."""
    lines = [line for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return list(zip(lines, parse_rows(Path(path), lines), strict=True))


def read_metrics(path: Path) -> list[dict]:
    """The rows of a jsonl log; a torn last line (killed mid-write) is dropped with a warning."""
    return [row for _, row in _lines_and_rows(path) if row is not None]


def require_run(run_dir: Path) -> None:
    """Refuse a path that is not an opdkit run directory (plot, report)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; give a run directory (the run.out of a training run)")
    if not (run_dir / "metrics.jsonl").is_file():
        raise RunDirError(f"{run_dir} has no metrics.jsonl, so it is not an opdkit run directory (or its run "
                          f"has not finished a step yet); give the run.out of a training run")


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
