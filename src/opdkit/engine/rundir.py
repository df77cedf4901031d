"""A run directory's lifecycle outside the loop: one owner at a time, and what `--resume` may do.

- `RunLock`: an exclusive fcntl lock on `RUN_DIR/.lock`, held for the whole run and released
  by the kernel when the process ends (a SIGKILL included), so a stale lock never blocks. A
  second run on the same directory fails at once, naming the holder's pid.
- `require_resumable`: `--resume` of a directory that does not exist is an error (a typo in
  run.out must not silently start a new run).
- `finished_step`: the step of a run that has already reached optim.steps.
- `resume_changes`: what may change on `--resume` (optim.lr: the remedy after a divergence) and
  the history kept in config.yaml.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from opdkit.errors import RunDirError
from opdkit.models import checkpoint

LOCK = ".lock"
# keys --resume may change, with a record in config.yaml; steps/parallel/progress/profile change silently
CHANGEABLE = ("optim.lr",)


class RunLock:
    """`with RunLock(run_dir):` the directory is this process's until the block ends."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path, self.enabled, self.fd = Path(run_dir) / LOCK, enabled, None

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise RunDirError(f"run.out={self.path.parent} is an existing file, not a directory; choose another run.out")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.path.parent} is in use by another run (pid {holder}); wait for it to end "
                              f"or stop it, or choose another run.out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)            # closing the last descriptor releases the lock
            self.fd = None


def require_resumable(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(f"--resume: {run_dir} does not exist, so there is nothing to resume; check run.out, "
                          f"or drop --resume to start a new run there")
    if not run_dir.is_dir():
        raise RunDirError(f"--resume: run.out={run_dir} is a file, not a run directory; check run.out")


def finished_step(run_dir: Path, steps: int) -> int | None:
    """The newest checkpoint's step when it has reached `steps` (the run is done), else None."""
    newest = checkpoint.latest(run_dir)
    if newest is None:
        return None
    step = int(newest.name[len(checkpoint.PREFIX):])
    return step if step >= steps else None


def resume_changes(old: dict, new: dict, step: int) -> list[dict]:
    """{step, key, old, new} for each CHANGEABLE key whose value differs; `old`, `new`: config dicts."""
    changes = []
    for key in CHANGEABLE:
        section, leaf = key.split(".")
        if old[section][leaf] != new[section][leaf]:
            changes.append({"step": step, "key": key, "old": old[section][leaf], "new": new[section][leaf]})
            old[section][leaf] = new[section][leaf]      # accepted: the rest of the comparison ignores it
    return changes
