"""Checks that need files but no model: run before the first model loads, so they fail in seconds.

`check_before_loading` reads the student's config.json (when it is a HF directory) for the
vocabulary size, and refuses a top-K larger than it; `check_k_fits` repeats the check with
the vocabulary the pair preflight settled on, for GGUF students and served teachers.
"""
from __future__ import annotations

import json
from pathlib import Path

from opdkit.engine.config import Config, ConfigError
from opdkit.errors import RunDirError


def known_vocab(model: str) -> int | None:
    """vocab_size from a HF model directory's config.json; None when it is not known without loading."""
    config = Path(model).expanduser() / "config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text()).get("vocab_size")
    except (OSError, ValueError):
        return None                   # loading the model will say what is wrong with the file
    return value if isinstance(value, int) else None


def check_k_fits(options: dict, vocab: int, what: str) -> None:
    k = options.get("k")
    if isinstance(k, int) and k > vocab:
        raise ConfigError(f"objective.options k={k} is larger than {what} ({vocab} tokens); "
                          f"set objective.options.k to at most {vocab}")


def check_before_loading(cfg: Config) -> None:
    out = Path(cfg.run.out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"run.out={out} is an existing file, not a directory; choose another run.out")
    vocab = known_vocab(cfg.model.student) if cfg.model.student else None
    if vocab is not None:
        check_k_fits(cfg.objective.options, vocab, f"the student's vocabulary ({cfg.model.student}/config.json)")
