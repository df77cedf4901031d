"""Run the TRL anchor ../shared/anchors/bench_distill.py unchanged, at another response length or batch.

    ANCHOR_MAX_COMPLETION=1024 ANCHOR_BATCH=2 python run_anchor_sized.py SCRIPT [ARGS...]

The anchor fixes `max_completion_length=64` and `per_device_train_batch_size=4` inside its
DistillationConfig. This shim replaces `trl.experimental.distillation.DistillationConfig`
with a subclass that sets those two fields from the environment after the anchor's own
__init__ arguments, then runs the script as benchmarks/run_anchor.py does (OUT_DIR supplied,
run as __main__ from the anchors directory). Everything else the anchor measures is its own
code: model loading from $SMOL_HF_DIR, the layer-dropped student, prompts, timers, RSS.
"""
import builtins
import os
import runpy
import sys
from pathlib import Path

OVERRIDES = {"max_completion_length": "ANCHOR_MAX_COMPLETION", "per_device_train_batch_size": "ANCHOR_BATCH"}


def sized_overrides(environ) -> dict[str, int]:
    """The DistillationConfig fields to replace, read from the environment (integers > 0)."""
    chosen = {}
    for field, variable in OVERRIDES.items():
        if environ.get(variable):
            value = int(environ[variable])
            if value <= 0:
                raise SystemExit(f"run_anchor_sized: error: {variable} must be a positive integer, got {value}")
            chosen[field] = value
    return chosen


def patch_config(overrides: dict[str, int]) -> None:
    """Make the anchor's `from trl.experimental.distillation import DistillationConfig` get the sized one."""
    import trl.experimental.distillation as distillation
    base = distillation.DistillationConfig

    class SizedDistillationConfig(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, **overrides})

    SizedDistillationConfig.__name__ = base.__name__
    distillation.DistillationConfig = SizedDistillationConfig


def main() -> None:
    script = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(script.parent))
    import common  # the anchors' module, found through the path above

    builtins.OUT_DIR = common.OUT_DIR
    patch_config(sized_overrides(os.environ))
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
