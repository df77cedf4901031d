"""User errors that have no home module of their own, and how an OSError reads to a user.

The CLI prints every user error as one `opdkit: error:` line and exits 2 (`opdkit.cli`).
Errors about one input live beside the code that reads it (ConfigError in config.py,
DataError in data.py, ModelError in models.py, CheckpointError in checkpoint.py); the ones
here are about run directories, command-line arguments and the machine (a full disk).
"""
from __future__ import annotations

import errno


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
