#!/usr/bin/env bash
# The main job: install, then on a CPU with no downloads (about 90 s on 2 cores):
#  1. each objective's fixed point by gradient descent on free logits;
#  2. the tiny testbed: a teacher trained by SFT, then OPD with four objectives from three
#     starting students, through the real training loop (opdkit lab sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=${1:-runs}
opdkit objectives
opdkit lab fixed-points --out "$out/fixed-points"
opdkit lab sweep --out "$out/sweep"
