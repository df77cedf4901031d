"""Run `opdkit.cli.main` on many argument lists in one interpreter; write each outcome as JSON.

    python tests/cli_driver.py cases.json results.json

cases.json maps a name to an argv. Each result holds the exit code (main's return value or
SystemExit's code) and everything written to file descriptor 2 while it ran, so lines from
libraries that hold their own handle on stderr count too; an uncaught exception is recorded
as a traceback in that text, exactly as the `opdkit` script would print it. One interpreter
keeps ~30 cases at one torch import instead of thirty.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def run_case(argv: list[str]) -> dict:
    from opdkit.cli import main
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:      # noqa: BLE001 - what the user would see: a traceback
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return {"code": code, "stderr": sink.read().decode(errors="replace")}


if __name__ == "__main__":
    cases = json.loads(open(sys.argv[1]).read())
    json.dump({name: run_case(argv) for name, argv in cases.items()}, open(sys.argv[2], "w"))
