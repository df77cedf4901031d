"""The errors that report bad input, in one place.

Each message names the input (config key, file and line, model path, checkpoint) and the fix.
`opdkit.cli` prints any of `USER_ERRORS` as one `opdkit: error: ...` line and exits 2; any
other exception is a bug and keeps its traceback. Every layer may raise these (this module
imports nothing).
"""
from __future__ import annotations


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


USER_ERRORS = (ConfigError, DataError, ModelError, CheckpointError, TrainingError)
