"""What a run's checkpoint holds, and how a run is restored from one.

A checkpoint (written atomically by `opdkit.models.checkpoint`, gathered across ranks by
`opdkit.scale.distributed`) holds the student (and an EMA teacher), the optimizer and scheduler,
the RNG, the prompt stream's position, the guard's state and the `RunState`: step
counters and what the guard changed (LR scale, objective). `--resume` continues from it as
if the run had never stopped; a guard rollback reloads an older one but keeps the run's
rollback count and changes (the replay must not repeat the failure).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opdkit.engine import rundir
from opdkit.engine.config import HISTORY, Config, config_from_dict, read_yaml, to_dict
from opdkit.engine.guard import Guard
from opdkit.engine.runstate import RunState
from opdkit.engine.session import Session
from opdkit.errors import TrainingError
from opdkit.models import checkpoint
from opdkit.scale import distributed


@dataclass
class Trainables:
    """The objects a checkpoint restores in place besides the RunState."""

    session: Session
    stream: object                 # opdkit.tasks.data.PromptStream
    optimizer: object
    scheduler: object
    guard: Guard | None


def checkpoint_modules(s: Session) -> dict:
    return {"student": s.student, **(s.teacher.checkpoint_modules() if s.teacher is not None else {})}


def save_run(t: Trainables, state: RunState, run_dir: Path, keep: int) -> Path:
    """Checkpoint `state.step` (every rank gathers, rank 0 writes); returns its path."""
    saved = {"step": state.step, "stream": t.stream.state_dict(),
             "optimizer": distributed.optimizer_state(t.session, t.optimizer),
             "scheduler": t.scheduler.state_dict(), "rng": checkpoint.rng_state(),
             "bad_streak": state.bad_streak, "rollbacks": state.rollbacks, "changes": state.changes(),
             "guard": None if t.guard is None else t.guard.state_dict()}
    return distributed.save(t.session, run_dir, state.step, checkpoint_modules(t.session), saved, keep)


def load_weights_and_position(t: Trainables, state: RunState, path: Path) -> dict:
    """Weights, optimizer, scheduler, RNG, data position and step counters from `path` (a rollback
    stops here); returns the saved state for `resume_changes`."""
    saved = distributed.load(t.session, path, checkpoint_modules(t.session), t.optimizer)
    t.stream.load_state_dict(saved["stream"])
    t.scheduler.load_state_dict(saved["scheduler"])
    checkpoint.set_rng_state(saved["rng"])
    state.step, state.bad_streak = saved["step"], saved["bad_streak"]
    return saved


def resumed_changes(saved: dict) -> tuple[int, float, str, tuple[str, ...]]:
    """(rollbacks, LR scale, switched objective or '', dropped teachers) recorded in a checkpoint's state.

    The LR scale is already in the restored scheduler's base LRs; it is kept for the next save.
    """
    changes = saved.get("changes", {})
    return (saved.get("rollbacks", 0), changes.get("lr_scale", 1.0), changes.get("objective", ""),
            tuple(changes.get("dropped_teachers", ())))


def check_resume_config(cfg: Config, run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(history kept in config.yaml, changes this resume makes: optim.lr only, see opdkit.engine.rundir).

    Refuses --resume when the config differs from the run's saved one in anything else but the
    run's length and how it is spread over processes.
    """
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return [], []
    tree = read_yaml(saved) or {}
    history = list(tree.get(HISTORY) or [])
    old = to_dict(config_from_dict(tree))
    new = to_dict(cfg)
    changes = rundir.resume_changes(old, new, step=-1)      # the step is filled in once resumed
    for section, key in (("optim", "steps"), ("run", "parallel"), ("run", "progress"), ("run", "profile")):
        old[section][key] = new[section][key]
    if old != new:
        diff = [f"{sec}.{k}" for sec in new if isinstance(new[sec], dict) for k in new[sec] if old[sec].get(k) != new[sec][k]]
        raise TrainingError(f"--resume with a different config than {saved}: {diff or ['mode']} changed; "
                            f"start a new run directory or restore the original values")
    return history, changes
