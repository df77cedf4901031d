"""The claim record, the experiment context, and the statistics and formatting every claim shares.

A claim's experiment runs per seed and returns numbers; its judge turns the numbers of all
seeds into a verdict (reproduced, not reproduced, inconclusive) and a measured text.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from opdkit.engine.config import load_config
from opdkit.engine.runner import run
from opdkit.lab.carry import build_carry_testbed
from opdkit.lab.testbed import build_pi_testbed, build_testbed, opd_overrides


@dataclass
class Claim:
    id: str
    title: str
    paper: str                      # what the paper reports
    hypothesis: str                 # what we test, in the miniature
    threshold: str                  # the pass rule, in words (the code is `judge`)
    run: Callable | None = None     # (ctx, seed) -> dict of numbers
    judge: Callable | None = None   # list of per-seed dicts -> (verdict, measured text)
    figures: list = field(default_factory=list)     # run-dir names (per seed) for the report


@dataclass
class Context:
    out: Path
    quick: bool
    memo: dict = field(default_factory=dict)     # runs shared between claims (the sampled-token baselines)

    def testbed(self, seed: int) -> Path:
        return build_testbed(self.out / "cache" / f"testbed-seed{seed}", students=(60, 100), seed=seed)

    def pi_testbed(self, seed: int) -> Path:
        return build_pi_testbed(self.out / "cache" / f"pi-testbed-seed{seed}", seed=seed)

    def carry_testbed(self, seed: int) -> Path:
        return build_carry_testbed(self.out / "cache" / f"carry-testbed-seed{seed}", seed=seed)

    def steps(self, quick: int, full: int) -> int:
        return quick if self.quick else full


def smoothed(values: list[float], window: int = 3) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def collapse_step(rows: list[dict], fraction: float = 0.5) -> int | None:
    """First step where the 3-step mean of sampled accuracy falls below `fraction` x its peak."""
    acc = smoothed([r["rollout/accuracy"] for r in rows])
    peak = max(acc)
    return next((r["step"] for r, a in zip(rows, acc) if a < fraction * peak), None)


def tail_mean(rows: list[dict], key: str, n: int = 10) -> float | None:
    values = [r[key] for r in rows[-n:] if isinstance(r.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def opd(ctx: Context, seed: int, name: str, student: str, objective: str, k: int = 5, steps: int = 80,
        extra: tuple[str, ...] = (), teacher: str = "teacher", max_new_tokens: int = 4) -> list[dict]:
    """One OPD run on the seed's testbed, guard off (the claims are about unguarded dynamics)."""
    import shutil
    root = ctx.testbed(seed)
    out = ctx.out / "runs" / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = opd_overrides(root, student, out, objective, k=k, steps=steps, teacher=teacher,
                              max_new_tokens=max_new_tokens)
    if objective in ("rkl", "fkl", "sampled_rkl"):         # objectives without K
        overrides = [o for o in overrides if not o.startswith("objective.options")]
    return run(load_config("distill", overrides=overrides + ["guard.enabled=false", f"run.seed={seed}",
                                                             "run.sample_every=5", *extra]))


def summary(rows: list[dict]) -> dict:
    return {"acc_start": statistics.fmean(r["rollout/accuracy"] for r in rows[:3]),
            "acc_end": tail_mean(rows, "rollout/accuracy"), "pk_qk_end": tail_mean(rows, "diag/pk_qk_ratio"),
            "p_k_end": tail_mean(rows, "diag/p_k"), "len_start": statistics.fmean(r["rollout/length_mean"] for r in rows[:3]),
            "len_end": tail_mean(rows, "rollout/length_mean"), "entropy_end": tail_mean(rows, "diag/student_entropy"),
            "collapse_step": collapse_step(rows)}


def fmt(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.fmean(xs):.3g}" + (f" +- {statistics.pstdev(xs):.2g}" if len(xs) > 1 else "")

