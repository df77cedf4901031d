"""Verifiable rewards (GRPO, eval accuracy) and rule checks (OPSD rule-following rate).

Rewards compare a decoded response with a gold answer: `numeric` takes the last number in
the response, `exact` compares stripped, case-folded text, `contains` looks for the answer in it. Checks decide whether a response
follows a rule without a reference: `contains:TEXT`, `regex:PATTERN`, or `spanish`.
"""
from __future__ import annotations

import re
from typing import Callable

_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def numeric_reward(response: str, answer: str) -> float:
    got, want = last_number(response), last_number(str(answer))
    return float(got is not None and want is not None and abs(got - want) < 1e-6)


def exact_reward(response: str, answer: str) -> float:
    return float(response.strip().casefold() == str(answer).strip().casefold())


def contains_reward(response: str, answer: str) -> float:
    return float(str(answer).strip().casefold() in response.casefold())


REWARDS: dict[str, Callable[[str, str], float]] = {"numeric": numeric_reward, "exact": exact_reward,
                                                   "contains": contains_reward}


def make_reward(kind: str) -> Callable[[str, str], float]:
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}; choose one of {sorted(REWARDS)}")
    return REWARDS[kind]


# Common short function words; a response counts as Spanish when it has clearly more of these
# than of the English list. Crude but transparent, and what the OPSD example measures.
_SPANISH = set("el la los las un una es son de del que y en por para con no se su al lo como más pero "
               "muy también hay está están este esta fue ser tiene puede".split())
_ENGLISH = set("the a an is are of that and in for with not it its to as but very also there this was be "
               "has can you your".split())


def is_spanish(text: str) -> bool:
    words = re.findall(r"[a-záéíóúñü]+", text.lower())
    es = sum(w in _SPANISH for w in words) + 2 * len(re.findall(r"[áéíóúñ¿¡]", text.lower()))
    en = sum(w in _ENGLISH for w in words)
    return es >= 2 and es > 2 * en


def make_check(spec: str) -> Callable[[str], bool]:
    """'contains:TEXT', 'regex:PATTERN' or 'spanish'."""
    if spec == "spanish":
        return is_spanish
    if spec.startswith("contains:"):
        needle = spec[len("contains:"):]
        return lambda text: needle in text
    if spec.startswith("regex:"):
        pattern = re.compile(spec[len("regex:"):])
        return lambda text: pattern.search(text) is not None
    raise ValueError(f"unknown check {spec!r}; use 'contains:TEXT', 'regex:PATTERN' or 'spanish'")
