#!/usr/bin/env bash
# Install opdkit into the current Python. Installs the CPU build of torch 2.13.0 first when no
# torch is importable (a bare `torch` requirement would pull a multi-GB CUDA build); GPU users
# install their own torch beforehand and it is kept. Usage: scripts/setup.sh [extra]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet torch==2.13.0
fi
extra=${1:-}
"$PY" -m pip install --quiet -e ".${extra:+[$extra]}"
