"""Where an optimizer step spends its time: named phases, summed per step.

`PhaseTimer` is cheap enough to run always (two perf_counter calls per phase); the engine
logs each phase as `time/<phase>_s`. With `sync=True` (`opdkit distill --profile` on a
GPU) it waits for the device at each boundary, so queued kernels are charged to the phase
that launched them rather than to whichever phase next synchronises.
`breakdown` turns logged metrics rows into the table that `--profile` prints.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

PHASES = ("rollout", "teacher", "student_forward", "backward", "optimizer", "diagnostics", "logging")


class PhaseTimer:
    def __init__(self, sync: bool = False):
        self.sync = sync and torch.cuda.is_available()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        self._wait()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._wait()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def _wait(self) -> None:
        if self.sync:
            torch.cuda.synchronize()

    def metrics(self) -> dict[str, float]:
        return {f"time/{p}_s": s for p, s in self.seconds.items()}


def breakdown(rows: list[dict], skip_first: int = 1) -> list[tuple[str, float, float]]:
    """(phase, mean seconds per step, share of the step) over the rows after `skip_first`.

    The first step carries one-time costs (allocator warm-up, lazy imports), so it is left
    out by default. `other` is the step time no phase accounts for.
    """
    rows = [r for r in rows if "time/step_s" in r][skip_first:] or [r for r in rows if "time/step_s" in r]
    if not rows:
        return []
    step = sum(r["time/step_s"] for r in rows) / len(rows)
    table = []
    for phase in PHASES:
        key = f"time/{phase}_s"
        if any(key in r for r in rows):
            table.append((phase, sum(r.get(key, 0.0) for r in rows) / len(rows)))
    other = step - sum(s for _, s in table)
    table.append(("other", other))
    table.append(("step", step))
    return [(name, s, s / step if step > 0 else 0.0) for name, s in table]


def format_breakdown(table: list[tuple[str, float, float]], steps: int) -> str:
    lines = [f"step-time breakdown (mean of {steps} steps after the first)",
             f"{'phase':<16}{'s/step':>10}{'share':>9}"]
    lines += [f"{name:<16}{s:>10.3f}{share:>8.1%}" for name, s, share in table]
    return "\n".join(lines)
