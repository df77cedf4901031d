"""What changes during a run, in one object the runner owns: `RunState`.

The config is read once, at the boundary, into frozen settings (`opdkit.engine.train.StepSettings`,
`opdkit.engine.optim.OptimSettings`, `opdkit.engine.runner.LoopSettings`) and never written after load.
Everything a run may change while it goes lives here instead: the step counters, the
objective in use (the guard may switch it), the peak-LR scale (the guard may lower it) and
the response length (a recipe stage's length curriculum may raise it), and the teachers the
guard dropped (several teachers: `drop_teacher`). The checkpoint holds
it (`changes` and the counters), so a resumed run continues with the same values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from opdkit.engine.diagnostics import with_diagnostics
from opdkit.objectives import accepted_options, make_objective, needs_teacher


def bind_objective(name: str, options: dict, diagnostics: bool, strict: bool = True) -> Callable:
    """The objective `name` with `options` bound (and per-token diagnostics when on).

    strict=False keeps only the options `name` accepts: a guard switch from topk_rkl_unnorm
    to rkl keeps diagnostic_k and drops k, support.
    """
    if not strict:
        options = {k: v for k, v in options.items() if k in accepted_options(name)}
    objective = make_objective(name, **options)
    return with_diagnostics(objective) if diagnostics else objective


@dataclass
class RunState:
    objective_name: str
    objective: Callable
    max_new_tokens: int
    lr_scale: float = 1.0
    step: int = 0
    bad_streak: int = 0             # non-finite steps in a row
    rollbacks: int = 0
    switched: bool = field(default=False)    # the guard switched the objective away from the config's
    dropped_teachers: tuple[str, ...] = ()   # several teachers the guard stopped using, in the order dropped

    @property
    def needs_teacher(self) -> bool:
        return needs_teacher(self.objective_name)

    def changes(self) -> dict:
        """What the guard changed, as checkpoints store it: {"lr_scale": f, "objective": name,
        "dropped_teachers": [names]}."""
        out = {}
        if self.lr_scale != 1.0:
            out["lr_scale"] = self.lr_scale
        if self.switched:
            out["objective"] = self.objective_name
        if self.dropped_teachers:
            out["dropped_teachers"] = list(self.dropped_teachers)
        return out


def initial_state(cfg) -> RunState:
    """The state a run starts in: the configured objective and response length, nothing changed."""
    name = cfg.objective_name
    return RunState(name, bind_objective(name, cfg.objective.options, cfg.run.diagnostics), cfg.rollout.max_new_tokens)
