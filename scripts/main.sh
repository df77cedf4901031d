#!/usr/bin/env bash
# The main job: install, then show each objective's fixed point on a CPU (no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
opdkit objectives
opdkit lab fixed-points --out "${1:-runs/fixed-points}"
