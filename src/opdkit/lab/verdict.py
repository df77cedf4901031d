"""Verdicts from per-seed statistics: each claim pre-registers statistics with a side and a threshold.

A `Stat` turns one seed's numbers into one number. Over seeds it gets a mean and a 95%
t-interval; it is "reproduced" when the whole interval lies on the predicted side of the
threshold, "not reproduced" when the whole interval lies on the other side, "inconclusive"
when the interval straddles it. With one seed (quick mode) there is no interval: the point
decides, and the text says so (one seed cannot tell an effect from seed noise).

A claim is reproduced when every test statistic is; not reproduced when any is not;
otherwise inconclusive. Preconditions (the setup worked: a teacher that can do the task)
that fail make the claim inconclusive whatever the tests say. When the claim's null arm
(the same pipeline with the effect removed) was run and passes the same tests, the claim is
inconclusive too: the setup cannot tell the effect from its absence.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

# two-sided 95% Student-t quantiles by degrees of freedom (1-10); beyond, the normal's 1.96 is within 10%
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


@dataclass(frozen=True)
class Stat:
    name: str                               # what is measured, in words
    value: Callable[[dict], float | None]   # one seed's numbers -> the statistic (None: not measured)
    op: str                                 # ">" or "<": the side the claim predicts
    threshold: float                        # the boundary, margin included
    precondition: bool = False              # True: checks the setup, not the claim

    def text(self) -> str:
        return f"{self.name} {self.op} {self.threshold:g}" + (" (precondition)" if self.precondition else "")


def interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% t-interval of the mean; low = high = mean for one value."""
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, mean, mean
    half = T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def stat_verdict(stat: Stat, xs: list[float | None]) -> tuple[str, str]:
    """(verdict, 'name mean [low, high] vs op threshold') for one statistic's per-seed values."""
    if not xs or any(x is None for x in xs):
        return "not reproduced", f"{stat.name}: not measured in {sum(x is None for x in xs)} of {len(xs)} seeds"
    mean, low, high = interval(xs)
    side = (lambda x: x > stat.threshold) if stat.op == ">" else (lambda x: x < stat.threshold)
    if side(low) and side(high):
        verdict = "reproduced"
    elif not side(low) and not side(high) and low != stat.threshold and high != stat.threshold:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    spread = f"{mean:.3g} [{low:.3g}, {high:.3g}]" if len(xs) > 1 else f"{mean:.3g} (1 seed)"
    return verdict, f"{stat.name} {spread} vs {stat.op} {stat.threshold:g}: {verdict}"


def combine(verdicts: list[str]) -> str:
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "not reproduced" if "not reproduced" in verdicts else "inconclusive"


def judge_stats(stats: list[Stat], results: list[dict], null: Callable[[dict], dict] | None = None) -> tuple[str, str]:
    """(verdict, measured text) of a claim's statistics over the per-seed `results`."""
    lines, tests, setup_ok = [], [], True
    for stat in stats:
        verdict, line = stat_verdict(stat, [stat.value(r) for r in results])
        lines.append(line)
        if stat.precondition:
            setup_ok = setup_ok and verdict == "reproduced"
        else:
            tests.append(verdict)
    verdict = combine(tests)
    if not setup_ok:
        verdict, lines = "inconclusive", lines + ["a precondition failed: the setup cannot test the claim"]
    if null is not None:
        arms = [null(r) for r in results]
        null_verdict = combine([stat_verdict(s, [s.value(a) for a in arms])[0] for s in stats if not s.precondition])
        lines.append(f"null arm: {null_verdict}")
        if null_verdict == "reproduced" and verdict == "reproduced":
            verdict = "inconclusive"
            lines.append("the null passes too: the setup cannot tell the effect from its absence")
    if len(results) == 1:
        lines.append("quick mode, 1 seed: point estimates, no interval")
    return verdict, "; ".join(lines)
