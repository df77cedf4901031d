"""Run a script from ../shared/anchors unchanged, as `python run_anchor.py SCRIPT [ARGS...]`.

bench_distill.py uses `OUT_DIR` (defined in the anchors' common.py) without importing it;
this shim puts common.OUT_DIR where the name lookup falls back to (builtins) and runs the
script as __main__ from the anchors directory, so the measured code is the anchor's own.
"""
import builtins
import runpy
import sys
from pathlib import Path

script = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(script.parent))
import common  # noqa: E402  (the anchors' module, found through the path above)

builtins.OUT_DIR = common.OUT_DIR
sys.argv = [str(script), *sys.argv[2:]]
runpy.run_path(str(script), run_name="__main__")
