"""Wilson intervals and McNemar's exact test against closed forms (and scipy where it is installed)."""
from __future__ import annotations

import math

import pytest

from opdkit.lab.proportions import binomial_two_sided, paired_accuracy, wilson


def test_wilson_matches_closed_forms():
    # 0/10: the lower end is 0 and the upper end z^2 / (n + z^2)
    z2 = 1.959964 ** 2
    assert wilson(0, 10) == pytest.approx((0.0, z2 / (10 + z2)), abs=1e-9)
    # 5/10 is symmetric about 1/2, known value 0.2366 .. 0.7634
    low, high = wilson(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert low + high == pytest.approx(1.0)
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(3, 12), (20, 64), (64, 64), (1, 200)]:
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-6)


def test_binomial_two_sided_closed_forms():
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)          # all five discordant one way
    assert binomial_two_sided(5, 5) == pytest.approx(2 / 32)
    assert binomial_two_sided(1, 6) == pytest.approx(2 * 7 / 64)      # P(X <= 1) = (1 + 6) / 64
    assert binomial_two_sided(2, 4) == 1.0                            # the middle: capped at 1
    assert binomial_two_sided(0, 0) == 1.0
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(3, 17), (9, 20), (0, 12)]:
        assert binomial_two_sided(k, n) == pytest.approx(stats.binomtest(k, n).pvalue)


def test_paired_accuracy_counts_only_discordant_problems():
    before = [True, True, False, False, True, False]
    after = [True, False, True, True, True, False]
    out = paired_accuracy(before, after)
    assert (out["n"], out["before"], out["after"], out["lost"], out["gained"]) == (6, 3, 4, 1, 2)
    assert out["p_mcnemar"] == pytest.approx(binomial_two_sided(1, 3))
    # problems solved by both or neither do not move the p-value
    more = paired_accuracy(before + [True] * 10, after + [True] * 10)
    assert more["p_mcnemar"] == out["p_mcnemar"] and more["before"] == 13
    assert math.isclose(paired_accuracy([True] * 4, [True] * 4)["p_mcnemar"], 1.0)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        paired_accuracy([True], [True, False])
    with pytest.raises(ValueError):
        wilson(3, 2)
