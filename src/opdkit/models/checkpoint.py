"""Atomic checkpoints: weights in safetensors, optimizer/RNG/data state in torch files.

A checkpoint is a directory `checkpoints/step_00000N/` that appears in one `rename` after
all of its files are written and flushed, so a crash or a full disk leaves either the new
checkpoint complete or no trace of it (the previous one untouched). `latest` skips
anything half-written; `prune` keeps the newest `keep` checkpoints.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from opdkit.errors import CheckpointError, no_room
from opdkit.models.integrity import safetensors_problem

PREFIX = "step_"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_module(module, path: Path) -> None:
    """All weights (shared/tied tensors handled by save_model), or only trainable ones (LoRA).

    A dict is a gathered state dict (opdkit.scale.distributed, FSDP); tied names are stored twice."""
    if isinstance(module, dict):
        save_file({k: v.detach().contiguous().clone() for k, v in module.items()}, str(path))
        return
    params = dict(module.named_parameters())
    trainable = {n: p.detach().contiguous() for n, p in params.items() if p.requires_grad}
    if 0 < len(trainable) < len(params):
        save_file(trainable, str(path))
    else:
        save_model(module, str(path))


def _load_module(module, path: Path) -> None:
    params = dict(module.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    if 0 < len(trainable) < len(params):
        state = load_file(str(path))
        missing = set(trainable) - set(state)
        if missing:
            raise CheckpointError(f"{path} lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[:3]}")
        with torch.no_grad():
            for name in trainable:
                params[name].copy_(state[name])
    else:
        load_model(module, str(path), strict=True)


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C during a checkpoint write takes effect when the write is done.

    A KeyboardInterrupt inside torch.save's zip writer came back out of its __exit__ as
    RuntimeError("unexpected pos ..."): a traceback and exit 1 instead of the one-line stop, and a
    lost checkpoint (test_run_dir_safety, session 5). Python runs signal handlers in the main thread,
    so swapping its SIGINT handler there is enough; the original handler runs once the write ends.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    pending: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        previous(signal.SIGINT, None)


def save(run_dir: Path, step: int, modules: dict, state: dict, keep: int = 2) -> Path:
    """Write modules (name -> nn.Module or state dict) and a picklable state dict as checkpoint `step`."""
    with interrupts_deferred():
        return _save(run_dir, step, modules, state, keep)


def _save(run_dir: Path, step: int, modules: dict, state: dict, keep: int) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, module in modules.items():
            _save_module(module, tmp / f"{name}.safetensors")
        with open(tmp / "state.pt", "wb") as fh:     # a Python file: the OSError (ENOSPC, EFBIG) stays attached
            torch.save(state, fh)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():                       # re-saving the same step (e.g. the final save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)   # never leave a half-written .tmp-step_* behind
        # torch.save reports a full disk as RuntimeError("unexpected pos ..."), safetensors as
        # SafetensorError("... No space left ..."): only the chained OSError or the words say why
        room = no_room(e)
        if room is None and not isinstance(e, OSError):
            raise
        previous = latest(run_dir)
        kept = f"the newest intact checkpoint is {previous}" if previous else "no earlier checkpoint exists"
        cause = room or " ".join(str(e).split())
        raise CheckpointError(f"could not write checkpoint step {step} in {root}: {cause}. Nothing was half-written; "
                              f"{kept}. Free space and rerun with --resume.") from e
    prune(root, keep)
    return final


def completed(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.pt").is_file())


def latest(run_dir: Path) -> Path | None:
    done = completed(run_dir)
    return done[-1] if done else None


def prune(root: Path, keep: int) -> None:
    done = completed(root.parent)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".tmp-{PREFIX}*"):      # left by a killed writer
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose files are truncated or corrupt (a kill or a disk fault after the rename)."""


def read_state(path: Path) -> dict:
    import pickle
    try:
        return torch.load(Path(path) / "state.pt", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as e:
        raise DamagedCheckpoint(f"{Path(path) / 'state.pt'} is damaged ({' '.join(str(e).split())[:160]})") from None


def load(path: Path, modules: dict) -> dict:
    """Load weights into `modules` in place; return the state dict. Damage raises DamagedCheckpoint
    before any module is touched."""
    state = read_state(path)
    files = {name: Path(path) / f"{name}.safetensors" for name in modules}
    for name, f in files.items():
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} has no {f.name}; it was written by a different configuration")
        problem = safetensors_problem(f)
        if problem:
            raise DamagedCheckpoint(f"{f} is damaged: {problem}")
    for name, module in modules.items():
        _load_module(module, files[name])
    return state


def load_newest_intact(run_dir: Path, load_fn, warn=print) -> tuple[Path | None, dict | None]:
    """(path, state) of the newest checkpoint that `load_fn(path)` loads; damaged newer ones are
    renamed to `damaged-step_*` (kept for inspection, out of resume and pruning) with a warning."""
    for path in reversed(completed(run_dir)):
        try:
            return path, load_fn(path)
        except DamagedCheckpoint as e:
            aside = path.with_name(f"damaged-{path.name}")
            shutil.rmtree(aside, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):      # another rank moved it first
                os.rename(path, aside)
            warn(f"skipped damaged checkpoint {path.name} ({e}); moved it to {aside.name}")
    return None, None


def rng_state() -> dict:
    import random
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


@contextlib.contextmanager
def seeded(seed: int):
    """Seed the global torch RNG for a block and restore it after: evaluation and probes sample
    reproducibly without changing a training run's own random stream."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def set_rng_state(state: dict) -> None:
    import random
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
