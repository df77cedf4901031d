"""The guard: declarative rules over the step metrics that warn, stop, or roll back.

A rule watches one metric (e.g. `diag/p_k`), smooths it over `window` steps, and compares
it with absolute bounds (`above`, `below`) and bounds relative to the run's own baseline
(`above_rel`, `below_rel`: multiples of the metric's mean over the first `baseline_steps`
steps). All given bounds must hold; after `patience` consecutive steps the rule fires once
(it re-arms when the condition clears). An `eval/` metric is logged only at evaluation steps
(run.eval_every): its window and patience count evaluations, its baseline is its value in the
run's "before" evaluation at step 0 (`observe_before`), and its onset is the step of the first
evaluation in the window. Actions:

- warn: an event in events.jsonl and a console line;
- stop: checkpoint and stop the run with the alarm as the message;
- rollback: reload the newest checkpoint from before the condition began, optionally
  multiply the learning rate (`lr_factor`) and switch the objective (`switch_objective`),
  and continue. `max_rollbacks` bounds the retries; then it stops.
- drop_teacher (several teachers): stop using the rule's teacher from this step on (a routed
  teacher's examples carry no loss, a mixture renormalises the other weights) and continue.
  A rollback with `drop_teacher: true` first goes back to before the onset, then drops it.

A rule with `teacher: NAME` (several teachers, `model.teachers`) watches that teacher's own
metric: `diag/X` reads `diag/teacher/NAME/X` (routed teachers' per-token metrics), `eval/X`
reads `eval/X/NAME` (e.g. eval/teacher_kl/NAME, both modes); `teacher_metric` maps it.

What the runner does about alarms is decided here by pure functions (`most_severe`,
`plan_rollback`, `plan_drop`, `Guard.retire_fixed_by`), so the decisions are testable without training;
the runner only carries them out (checkpoints, logs).

The default rules are the collapse signatures of the paper: the student's mass draining off
its own top-K (mechanism 2's "+1" term), hedge words and repeated 3-grams rising (the
"maybe" loops), entropy collapsing, responses running to the budget, top-K overlap falling;
and, when the run evaluates, its greedy held-out answers starting to loop (`eval_repeat`).
`replay` runs a guard over a finished run's metrics rows (what it would have said).
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field

ACTIONS = ("warn", "stop", "rollback", "drop_teacher")


def teacher_metric(metric: str, teacher: str) -> str:
    """The metric a rule scoped to `teacher` watches: diag/X -> diag/teacher/NAME/X, eval/X -> eval/X/NAME.

    Names already scoped to that teacher, and every metric of an unscoped rule, are kept as they are.
    """
    parts = metric.split("/")
    if not teacher or metric.startswith(f"diag/teacher/{teacher}/") or (parts[0] == "eval" and len(parts) == 3):
        return metric
    if parts[0] == "diag":
        return f"diag/teacher/{teacher}/{metric[len('diag/'):]}"
    if parts[0] == "eval":
        return f"{metric}/{teacher}"
    return metric


@dataclass
class Rule:
    name: str
    metric: str
    above: float | None = None
    below: float | None = None
    above_rel: float | None = None
    below_rel: float | None = None
    window: int = 1
    patience: int = 1
    action: str = "warn"
    lr_factor: float = 1.0
    switch_objective: str = ""
    # True for rules about a failure of other objectives: once `switch_objective` is in use
    # (from the start or after a rollback) the rule is dropped (Guard.retire_fixed_by).
    retire_when_switched: bool = False
    why: str = ""
    teacher: str = ""              # several teachers: watch this teacher's metric, act on this teacher
    drop_teacher: bool = False     # action rollback: also stop using `teacher` after going back

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"guard rule {self.name!r}: action must be one of {ACTIONS}, got {self.action!r}")
        if all(b is None for b in (self.above, self.below, self.above_rel, self.below_rel)):
            raise ValueError(f"guard rule {self.name!r} needs at least one of above, below, above_rel, below_rel")
        if self.window < 1 or self.patience < 1:
            raise ValueError(f"guard rule {self.name!r}: window and patience must be at least 1")
        if self.action == "drop_teacher" and not self.teacher:
            raise ValueError(f"guard rule {self.name!r}: action drop_teacher needs `teacher` (the one to drop)")
        if self.drop_teacher and (self.action != "rollback" or not self.teacher):
            raise ValueError(f"guard rule {self.name!r}: drop_teacher: true goes with action rollback and a `teacher`; "
                             f"to drop without going back use action: drop_teacher")

    @property
    def watched(self) -> str:
        """The metric this rule reads from a step's metrics (its teacher's own when scoped)."""
        return teacher_metric(self.metric, self.teacher)


def _rule_from_spec(spec) -> Rule:
    """A Rule from a config mapping; unknown or missing keys are named (with the closest valid key)."""
    import difflib
    from dataclasses import fields
    names = [f.name for f in fields(Rule)]
    if not isinstance(spec, dict):
        raise ValueError(f"guard rule {spec!r} must be a mapping with name, metric and a bound")
    for key in spec:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"guard rule {spec.get('name', spec)!r} has no key {key!r}{hint} keys: {names}")
    missing = [k for k in ("name", "metric") if k not in spec]
    if missing:
        raise ValueError(f"guard rule {spec} needs {' and '.join(missing)}")
    return Rule(**spec)


DEFAULT_RULES = [
    Rule("topk_mass_drain", "diag/p_k", below_rel=0.85, window=3, patience=3, action="rollback",
         lr_factor=0.5, switch_objective="topk_rkl_tail", retire_when_switched=True,
         why="the student's mass leaves its own top-K (the biased '+1' gradient of unnormalised top-K RKL)"),
    # Absolute, not relative: a student that loops from its first steps has a looping baseline
    # (SmolLM2's 10-layer student: 0.6 over steps 1-5), and a relative bound would never fire.
    # With no checkpoint from before the onset, the rollback becomes a stop.
    Rule("repeat_loops", "diag/repeat_ratio", above=0.6, window=3, patience=3, action="rollback",
         lr_factor=0.5, why="most response tokens repeat an earlier 3-gram: the student is looping"),
    # Greedy held-out answers, not temperature-1 samples: a student can loop greedily while its samples
    # do not (the Gemma -> SmolLM2 run: eval 0.05 -> 0.61 by step 6, samples below 0.16; RESULTS.md
    # "Guard: eval repetition rule"). Both bounds: a student that starts repetitive (the pruned SmolLM2's
    # arithmetic answers: 0.42) must also get half as repetitive again. One evaluation is enough to act.
    Rule("eval_repeat", "eval/repeat_ratio", above=0.5, above_rel=1.5, action="rollback", lr_factor=0.5,
         why="over half of the greedy held-out answers' tokens repeat an earlier 3-gram, 1.5x the start: "
             "the student is learning to loop"),
    Rule("hedging", "diag/hedge_rate", above_rel=3.0, above=20.0, window=3, patience=3, action="warn",
         why="hedge words ('wait', 'maybe', ...) rising: revision tokens pulling the student sideways"),
    Rule("entropy_collapse", "diag/student_entropy", below_rel=0.25, window=3, patience=3, action="warn",
         why="the student's entropy collapsing: it stops exploring and the on-policy signal vanishes"),
    Rule("runaway_length", "diag/truncation", above=0.9, above_rel=2.0, window=3, patience=3, action="warn",
         why="responses running to the token budget without EOS"),
    Rule("overlap_fall", "diag/overlap", below_rel=0.6, window=3, patience=3, action="warn",
         why="top-K overlap with the teacher falling, which precedes degeneration"),
]


@dataclass
class Alarm:
    rule: str
    metric: str
    step: int
    value: float
    baseline: float | None
    action: str
    onset: int          # first step of the window in which the condition started holding
    why: str
    teacher: str = ""   # the teacher a scoped rule watches and acts on


@dataclass
class _Track:
    values: deque
    streak: int = 0
    fired: bool = False
    streak_start: int = 0
    steps: deque = field(default_factory=deque)     # the steps of `values` (an eval/ metric skips steps)


@dataclass
class Guard:
    rules: list[Rule]
    baseline_steps: int = 5
    baselines: dict = field(default_factory=dict)
    _seen: dict = field(default_factory=dict)
    _tracks: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, rules: list[dict] = (), baseline_steps: int = 5, use_defaults: bool = True,
                    disable: list[str] = ()) -> "Guard":
        """Default rules (minus `disable`), then `rules` (a same-named rule replaces a default)."""
        chosen = {r.name: Rule(**asdict(r)) for r in DEFAULT_RULES if use_defaults and r.name not in disable}
        unknown = set(disable) - {r.name for r in DEFAULT_RULES}
        if unknown:
            raise ValueError(f"guard.disable names unknown rules {sorted(unknown)}; "
                             f"defaults: {[r.name for r in DEFAULT_RULES]}")
        for spec in rules:
            rule = _rule_from_spec(spec)
            chosen[rule.name] = rule
        return cls(list(chosen.values()), baseline_steps)

    def _baseline(self, metric: str, value: float) -> float | None:
        seen = self._seen.setdefault(metric, [])
        if metric not in self.baselines and len(seen) < self.baseline_steps:
            seen.append(value)
            if len(seen) == self.baseline_steps:
                self.baselines[metric] = sum(seen) / len(seen)
        return self.baselines.get(metric)

    def observe_before(self, metrics: dict) -> None:
        """The run's step-0 ("before") evaluation: each watched metric in it that has no baseline yet
        takes its value as the baseline. Evaluations are few, so the mean of the first
        `baseline_steps` of them would come too late; the untrained student is the reference."""
        for metric in {r.watched for r in self.rules}:
            value = metrics.get(metric)
            if isinstance(value, (int, float)) and metric not in self.baselines:
                self.baselines[metric] = float(value)

    def _holds(self, rule: Rule, value: float, baseline: float | None) -> bool:
        checks = []
        if rule.above is not None:
            checks.append(value > rule.above)
        if rule.below is not None:
            checks.append(value < rule.below)
        if rule.above_rel is not None or rule.below_rel is not None:
            if baseline is None:
                return False            # relative rules wait for the baseline
            if rule.above_rel is not None:
                checks.append(value > rule.above_rel * baseline)
            if rule.below_rel is not None:
                checks.append(value < rule.below_rel * baseline)
        return all(checks)

    def observe(self, step: int, metrics: dict) -> list[Alarm]:
        """Feed one step's metrics; returns the alarms that fire at this step."""
        baselines = {}
        for metric in {r.watched for r in self.rules}:
            value = metrics.get(metric)
            if isinstance(value, (int, float)):
                baselines[metric] = self._baseline(metric, float(value))
        alarms = []
        for rule in self.rules:
            value = metrics.get(rule.watched)
            if not isinstance(value, (int, float)):
                continue
            track = self._tracks.setdefault(rule.name, _Track(deque(maxlen=rule.window), steps=deque(maxlen=rule.window)))
            track.values.append(float(value))
            track.steps.append(step)
            smooth = sum(track.values) / len(track.values)
            if self._holds(rule, smooth, baselines.get(rule.watched)):
                if track.streak == 0:       # the window's first step (a track resumed without steps: every step seen)
                    full = len(track.steps) == len(track.values)
                    track.streak_start = track.steps[0] if full else step - len(track.values) + 1
                track.streak += 1
            else:
                track.streak, track.fired = 0, False
            if track.streak >= rule.patience and not track.fired:
                track.fired = True
                alarms.append(Alarm(rule.name, rule.watched, step, smooth, baselines.get(rule.watched), rule.action,
                                    track.streak_start, rule.why, rule.teacher))
        return alarms

    def rule(self, name: str) -> Rule:
        return next(r for r in self.rules if r.name == name)

    def retire_fixed_by(self, objective: str) -> None:
        """Drop rules marked retire_when_switched whose remedy is `objective`, once it is in use.

        Such a rule watches for a failure of other objectives (topk_mass_drain: the biased
        gradient of unnormalised top-K drains P_K). Under its remedy the watched metric has a
        different, sound fixed point (the tail objective moves P_K to the teacher's Q_K, which
        may sit below the start), so the same bound would raise false alarms and roll back
        again and again.
        """
        self.rules = [r for r in self.rules if not (r.retire_when_switched and r.switch_objective == objective)]

    def retire_teacher(self, teacher: str) -> None:
        """Drop the rules scoped to `teacher` once it is dropped: its metrics no longer mean anything."""
        self.rules = [r for r in self.rules if r.teacher != teacher]

    def reset_tracks(self) -> None:
        """After a rollback: forget the smoothed windows and streaks, keep the baselines."""
        self._tracks = {}

    def state_dict(self) -> dict:
        return {"baselines": dict(self.baselines), "seen": {k: list(v) for k, v in self._seen.items()},
                "tracks": {k: {"values": list(t.values), "maxlen": t.values.maxlen, "streak": t.streak,
                               "fired": t.fired, "streak_start": t.streak_start, "steps": list(t.steps)}
                           for k, t in self._tracks.items()}}

    def load_state_dict(self, state: dict) -> None:
        """A state from `state_dict` (one saved before tracks kept their steps loads too)."""
        self.baselines = dict(state["baselines"])
        self._seen = {k: list(v) for k, v in state["seen"].items()}
        self._tracks = {k: _Track(deque(t["values"], maxlen=t["maxlen"]), t["streak"], t["fired"], t["streak_start"],
                                  deque(t.get("steps", ()), maxlen=t["maxlen"]))
                        for k, t in state["tracks"].items()}


def replay(guard: Guard, rows: list[dict]) -> list[Alarm]:
    """The alarms `guard` raises over a run's metrics rows (metrics.jsonl, in order), acting on none:
    the step-0 row is the before evaluation, every other row one step. A run that rolled back has
    only its kept rows in metrics.jsonl, so its replay is the kept trajectory's."""
    alarms = []
    for row in rows:
        if row["step"] == 0:
            guard.observe_before(row)
        else:
            alarms += guard.observe(row["step"], row)
    return alarms


def describe_alarm(alarm: Alarm) -> str:
    base = "" if alarm.baseline is None else f" (baseline {alarm.baseline:.4g})"
    why = f"{alarm.why}; " if alarm.why else ""           # a user's rule may not say why
    action = f"{alarm.action} {alarm.teacher!r}" if alarm.action == "drop_teacher" else alarm.action
    return f"guard: {alarm.rule} at step {alarm.step}: {alarm.metric} = {alarm.value:.4g}{base}; {why}action: {action}"


# ----------------------------------------------------------------------------- decisions

def most_severe(alarms: list[Alarm]) -> Alarm | None:
    """The alarm to act on: the first `stop`, else the first `rollback`, else the first `drop_teacher`
    (the runner then carries out every drop alarm of the step); None when all only warn."""
    for action in ("stop", "rollback", "drop_teacher"):
        for alarm in alarms:
            if alarm.action == action:
                return alarm
    return None


@dataclass(frozen=True)
class RollbackPlan:
    """A rollback alarm's outcome: stop (`stop_reason`), or reload checkpoint `to_step` and go on
    with the LR scale `lr_scale` and, when `objective` is set, that objective."""

    stop_reason: str = ""
    to_step: int = -1
    lr_scale: float = 1.0
    objective: str = ""


def plan_rollback(rule: Rule, onset: int, checkpoint_steps: list[int], rollbacks: int, max_rollbacks: int,
                  lr_scale: float, objective: str) -> RollbackPlan:
    """Where a rollback for `rule` (condition since step `onset`) goes and what it changes.

    checkpoint_steps: the steps of the completed checkpoints; the newest one before the onset is
    the target. Stops instead after `max_rollbacks` rollbacks or when no checkpoint predates the onset.
    """
    if rollbacks >= max_rollbacks:
        return RollbackPlan(stop_reason=f"{rollbacks} rollbacks already (guard.max_rollbacks)")
    healthy = sorted(step for step in checkpoint_steps if step < onset)
    if not healthy:
        return RollbackPlan(stop_reason=f"no checkpoint from before step {onset} to roll back to")
    switch = rule.switch_objective if rule.switch_objective and rule.switch_objective != objective else ""
    return RollbackPlan(to_step=healthy[-1], lr_scale=lr_scale * rule.lr_factor, objective=switch)


@dataclass(frozen=True)
class DropPlan:
    """A drop_teacher outcome: stop (`stop_reason`), or go on with the teachers in `dropped` unused."""

    stop_reason: str = ""
    dropped: tuple[str, ...] = ()


def plan_drop(teacher: str, dropped: tuple[str, ...], weights: dict[str, float]) -> DropPlan:
    """Drop `teacher` on top of the already `dropped` ones; `weights` are the configured teachers'
    (1 each when routed; the mixture's weights otherwise). Stops instead when no teacher with a
    positive weight would be left; dropping a dropped teacher changes nothing."""
    if teacher in dropped:
        return DropPlan(dropped=dropped)
    if teacher not in weights:
        return DropPlan(stop_reason=f"teacher {teacher!r} is not among the run's teachers ({', '.join(weights)})")
    left = [name for name, w in weights.items() if name not in dropped and name != teacher and w > 0]
    if not left:
        return DropPlan(stop_reason=f"dropping teacher {teacher!r} would leave no teacher to learn from")
    return DropPlan(dropped=(*dropped, teacher))
