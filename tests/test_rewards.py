"""Verifiable rewards and rule checks."""
from __future__ import annotations

import pytest

from opdkit.tasks.rewards import is_spanish, last_number, make_check, make_reward


def test_numeric_reward_reads_the_last_number():
    reward = make_reward("numeric")
    assert reward("3 + 4 is 7.", "7") == 1.0
    assert reward("7? no, it is 8", "7") == 0.0
    assert reward("no number here", "7") == 0.0
    assert last_number("1,234.5 and then -3") == -3.0


def test_exact_and_contains_rewards():
    assert make_reward("exact")("  Paris ", "paris") == 1.0
    assert make_reward("exact")("Paris, France", "paris") == 0.0
    assert make_reward("contains")("It is Paris, France", "paris") == 1.0
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward("bleu")


def test_rule_checks():
    assert is_spanish("La capital de Francia es París.")
    assert not is_spanish("The capital of France is Paris.")
    assert make_check("contains:Cheers!")("ok. Cheers!")
    assert make_check("regex:^[A-Z ]+$")("ALL CAPS") and not make_check("regex:^[A-Z ]+$")("no")
    with pytest.raises(ValueError, match="unknown check"):
        make_check("french")
