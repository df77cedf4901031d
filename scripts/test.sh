#!/usr/bin/env bash
# Install with test extras and run the default (not slow, not gpu) test suite.
# pytest exit code 5 (no tests collected) is a failure here, as it is in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
PY=${PYTHON:-python3}
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests collected: failing" >&2; exit 1; fi
exit "$rc"
