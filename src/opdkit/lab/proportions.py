"""Accuracy on a held-out problem set as a proportion: its Wilson interval, and the paired exact test.

A run's accuracy before and after training is measured on the same problems, so the comparison is
paired: only the discordant problems (solved before but not after, `lost`; after but not before,
`gained`) carry information, and under the null "training does not change accuracy" each discordant
problem is lost or gained with probability 1/2 (McNemar's exact test, a two-sided binomial test on
the discordant count). The Wilson score interval is used for one proportion because the normal
interval is wrong near 0 and 1, where a 135M model's arithmetic accuracy lives.
"""
from __future__ import annotations

import math


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (default 95%) of successes / n; (0, 1) when n is 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (twice the smaller tail, at most 1)."""
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n], got {k} of {n}")
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_accuracy(before: list[bool], after: list[bool]) -> dict:
    """Accuracy before and after on the same problems, their Wilson intervals, and McNemar's exact test."""
    if len(before) != len(after):
        raise ValueError(f"paired lists differ in length: {len(before)} vs {len(after)}")
    n = len(before)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    gained = sum(1 for b, a in zip(before, after) if a and not b)
    return {"n": n, "before": sum(map(bool, before)), "after": sum(map(bool, after)),
            "before_ci": wilson(sum(map(bool, before)), n), "after_ci": wilson(sum(map(bool, after)), n),
            "lost": lost, "gained": gained, "p_mcnemar": binomial_two_sided(lost, lost + gained)}
