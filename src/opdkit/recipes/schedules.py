"""Stage switch criteria and schedules for `opdkit recipe` stages.

A recipe stage ends at `optim.steps`, or earlier when its `until` criterion holds:

    until: {metric: eval/accuracy, at_least: 0.5}          # a metric reaching a value
    until: {metric: eval/teacher_kl, at_most: 0.3}
    until: {metric: eval/accuracy, plateau: 3}             # no improvement for 3 evaluations
    until: {metric: eval/teacher_kl, plateau: 3, mode: min, min_delta: 0.01}

Criteria read the stage's own metrics.jsonl, so they hold across `--resume` without state of
their own. Only steps >= 1 can end a stage (the step-0 row is the "before" evaluation; for
a plateau it is the first value to improve on).

The length curriculum (Decoupling's entropy gate) raises `rollout.max_new_tokens` by `step`
every `every` steps, but only while the student's per-token entropy on its own samples for
held-out prompts stays at or above `entropy_floor`; below the floor the length holds:

    schedule: {length: {start: 16, step: 16, max: 64, entropy_floor: 0.5, every: 5}}

The current length is logged as `schedule/max_new_tokens` each step and restored on resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from opdkit.engine.evaluate import _generate
from opdkit.errors import ConfigError
from opdkit.models.checkpoint import seeded
from opdkit.models.forward import model_head, pack

# ----------------------------------------------------------------------------- switch criteria

@dataclass(frozen=True)
class Criterion:
    metric: str
    at_least: float | None = None
    at_most: float | None = None
    plateau: int = 0
    mode: str = "max"
    min_delta: float = 0.0

    def reason(self, rows: list[dict]) -> str | None:
        """Why the stage should end now, given every metrics row logged so far; None to go on."""
        series = [(r["step"], float(r[self.metric])) for r in rows if self.metric in r]
        trained = [(step, v) for step, v in series if step >= 1]
        if not trained:
            return None
        step, value = trained[-1]
        if self.at_least is not None and value >= self.at_least:
            return f"{self.metric} = {value:.4g} >= {self.at_least:g} at step {step}"
        if self.at_most is not None and value <= self.at_most:
            return f"{self.metric} = {value:.4g} <= {self.at_most:g} at step {step}"
        if self.plateau and plateaued([v for _, v in series], self.plateau, self.mode, self.min_delta):
            return f"{self.metric} has not improved for {self.plateau} evaluations (step {step})"
        return None


def plateaued(values: list[float], patience: int, mode: str = "max", min_delta: float = 0.0) -> bool:
    """True when the last `patience` values all fail to beat the best value before them by min_delta."""
    if len(values) <= patience:
        return False
    sign = 1.0 if mode == "max" else -1.0
    best_before = max(sign * v for v in values[:-patience])
    return all(sign * v <= best_before + min_delta for v in values[-patience:])


def parse_criterion(where: str, spec) -> Criterion | None:
    """`until:` of a stage (steps are handled by the caller); errors name the stage."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: `until` must be a mapping, e.g. {{metric: eval/accuracy, at_least: 0.5}}")
    known = {"steps", "metric", "at_least", "at_most", "plateau", "mode", "min_delta"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown `until` key(s) {unknown}; allowed: {sorted(known)}")
    rest = {k: v for k, v in spec.items() if k != "steps"}
    if not rest:
        return None
    if "metric" not in rest:
        raise ConfigError(f"{where}: `until` needs a metric (e.g. eval/accuracy) with at_least, at_most or plateau")
    tests = [k for k in ("at_least", "at_most", "plateau") if k in rest]
    if len(tests) != 1:
        raise ConfigError(f"{where}: `until` needs exactly one of at_least, at_most, plateau (got {tests or 'none'})")
    if rest.get("mode", "max") not in ("max", "min"):
        raise ConfigError(f"{where}: until.mode must be 'max' or 'min'")
    if "plateau" in rest and (not isinstance(rest["plateau"], int) or rest["plateau"] < 1):
        raise ConfigError(f"{where}: until.plateau must be a whole number of evaluations >= 1")
    try:
        return Criterion(str(rest["metric"]), _num(rest.get("at_least")), _num(rest.get("at_most")),
                         int(rest.get("plateau", 0)), rest.get("mode", "max"), float(rest.get("min_delta", 0.0)))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: `until` values must be numbers, got {rest}") from None


def _num(value) -> float | None:
    return None if value is None else float(value)


# ----------------------------------------------------------------------------- length curriculum

@dataclass(frozen=True)
class LengthCurriculum:
    start: int
    step: int
    max: int
    entropy_floor: float
    every: int


def next_length(current: int, entropy: float, floor: float, step: int, maximum: int) -> int:
    """The entropy gate: grow by `step` (capped at `maximum`) only while entropy >= floor."""
    if entropy >= floor and current < maximum:
        return min(maximum, current + step)
    return current


def parse_length(where: str, spec) -> LengthCurriculum:
    known = {"start", "step", "max", "entropy_floor", "every"}
    if not isinstance(spec, dict) or set(spec) - known or not {"start", "max", "entropy_floor"} <= set(spec):
        raise ConfigError(f"{where}: schedule.length needs start, max, entropy_floor (and optionally step, every); "
                          f"got {spec!r}")
    c = LengthCurriculum(int(spec["start"]), int(spec.get("step", spec["start"])), int(spec["max"]),
                         float(spec["entropy_floor"]), int(spec.get("every", 5)))
    if not 1 <= c.start <= c.max or c.step < 1 or c.every < 1:
        raise ConfigError(f"{where}: schedule.length needs 1 <= start <= max, step >= 1, every >= 1")
    return c


@torch.no_grad()
def heldout_entropy(s, items: list, max_new_tokens: int) -> float:
    """Token-mean entropy of the student on its own temperature-1 samples (at most `max_new_tokens`)
    for held-out prompts."""
    total, tokens = 0.0, 0.0
    with seeded(4321):
        rollouts = _generate(s, items, greedy=False, max_new_tokens=max_new_tokens)
    size = s.cfg.optim.micro_batch
    for i in range(0, len(rollouts), size):
        packed = pack(rollouts.prompt_ids[i:i + size], rollouts.response_ids[i:i + size], s.tokenizer.pad_token_id)
        logp = model_head(s.student, packed, s.vocab).logprobs()              # (B, T, V)
        entropy = -(logp.exp() * logp).sum(-1)                                 # (B, T)
        total += float((entropy * packed.response_mask).sum())
        tokens += float(packed.response_mask.sum())
    return total / max(tokens, 1.0)


# ----------------------------------------------------------------------------- the runner's control

class StageControl:
    """What the runner asks a recipe stage: three calls with values, never the runner itself.

    - `resumed(rows, state)`: after a resume, with every metrics row logged so far;
    - `after_step(step, metrics, state)`: may change `state.max_new_tokens` and add metrics;
    - `done(step, rows)`: why the stage ends now (None: go on).

    measure_entropy(max_new_tokens) -> the student's held-out entropy (the length gate's input).
    """

    def __init__(self, criterion: Criterion | None = None, length: LengthCurriculum | None = None,
                 measure_entropy: Callable[[int], float] | None = None):
        if length is not None and measure_entropy is None:
            raise ValueError("a length curriculum needs measure_entropy")
        self.criterion, self.length, self.measure_entropy = criterion, length, measure_entropy

    def resumed(self, rows: list[dict], state) -> None:
        if self.length is None:
            return
        logged = [r["schedule/max_new_tokens"] for r in rows if "schedule/max_new_tokens" in r]
        if logged:
            state.max_new_tokens = int(logged[-1])

    def after_step(self, step: int, metrics: dict, state) -> None:
        if self.length is None:
            return
        if step % self.length.every == 0:
            entropy = self.measure_entropy(state.max_new_tokens)
            metrics["schedule/heldout_entropy"] = entropy
            state.max_new_tokens = next_length(state.max_new_tokens, entropy, self.length.entropy_floor,
                                               self.length.step, self.length.max)
        metrics["schedule/max_new_tokens"] = state.max_new_tokens

    def done(self, step: int, rows: list[dict]) -> str | None:
        return None if self.criterion is None else self.criterion.reason(rows)
