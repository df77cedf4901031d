"""The errors that report bad input, in one place, and how an OSError reads to a user.

Each message names the input (config key, file and line, model path, checkpoint, run
directory, flag) and the fix. `opdkit.cli` prints any of `USER_ERRORS` as one
`opdkit: error: ...` line and exits 2; any other exception is a bug and keeps its traceback.
Every layer may raise these (this module imports nothing from opdkit).
"""
from __future__ import annotations

import errno


class ConfigError(ValueError):
    """A bad configuration value or key; the message names the key and the fix."""


class DataError(ValueError):
    """A problem with a dataset file; the message names the file, the line and the fix."""


class ModelError(ValueError):
    """A model that cannot be loaded or a pair that does not fit; the message says what to change."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says what is intact."""


class TrainingError(RuntimeError):
    """The run cannot continue (repeated non-finite steps, mismatched resume)."""


class RunDirError(ValueError):
    """A run directory that is missing, is not a run, is a file, or is in use by another process."""


class UsageError(ValueError):
    """A command-line argument out of range; the message names the flag."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where the run stopped and how to resume it.

    Still a KeyboardInterrupt, so code that calls the runner (recipes, tests) sees Ctrl-C as Ctrl-C."""


# write failures that mean "no room": a full disk, a quota, a file-size limit (ulimit -f)
NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
           errno.EFBIG: "the file-size limit was reached"}
# torch.save and safetensors wrap the OS error in their own exceptions; these are their words
_NO_ROOM_WORDS = (("No space left", "the disk is full"), ("StorageFull", "the disk is full"),
                  ("Disk quota", "the disk quota is exhausted"), ("File too large", "the file-size limit was reached"),
                  ("FileTooLarge", "the file-size limit was reached"))


def no_room(exc: BaseException) -> str | None:
    """'the disk is full' (or the quota / file-size limit) when `exc` or its cause says so, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_ROOM:
            return NO_ROOM[exc.errno]
        for words, meaning in _NO_ROOM_WORDS:
            if words in str(exc):
                return meaning
        exc = exc.__cause__ or exc.__context__
    return None


USER_ERRORS = (ConfigError, DataError, ModelError, CheckpointError, TrainingError, RunDirError, UsageError)
