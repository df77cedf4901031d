#!/usr/bin/env bash
# The main job: install, then on a CPU with no downloads (6 min 7 s wall, 5 min 38 s of CPU on
# 2 cores beside a CI run, 2026-12-01):
#  1. each objective's fixed point by gradient descent on free logits;
#  2. the paper's claims in miniature (opdkit lab reproduce --quick): a claims table,
#     claims.json and report.html, through the real training loop on tiny models;
#  3. the testbed sweep: OPD with four objectives from three starting students.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=${1:-runs}
opdkit objectives
opdkit lab fixed-points --out "$out/fixed-points"
opdkit lab reproduce --quick --out "$out/lab-quick"
opdkit lab sweep --out "$out/sweep"
