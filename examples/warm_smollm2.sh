#!/usr/bin/env bash
# Issue 18 item 4: OPD alone against an SFT warm start then OPD, on the every-third-layer SmolLM2 student, at the
# same budget (examples/warm_smollm2.yaml). One arm at a time, each under `/usr/bin/time -v` with its log in
# $ROOT/<arm>.log; then held-out accuracy on all 85 problems, paired against the untrained student.
#   examples/warm_smollm2.sh                 # both arms, then the paired accuracy
#   examples/warm_smollm2.sh sft,opd         # one arm (a comma-separated stage list); rerun to resume it
set -euo pipefail
CONFIG=${CONFIG:-examples/warm_smollm2.yaml}
ROOT=${ROOT:-runs/warm}                       # must match the recipe's `out` (or pass another with CONFIG)
mkdir -p $ROOT
ARMS=${*:-opd_alone sft,opd}
for arm in $ARMS; do
  cmd="opdkit recipe $CONFIG --out $ROOT --resume --only $arm"
  echo "$(date -u +%H:%M:%S) $cmd"
  /usr/bin/time -v $cmd > $ROOT/${arm//,/_}.log 2>&1 || echo "arm $arm failed: see $ROOT/${arm//,/_}.log"
done
runs=$(for s in opd_alone sft opd; do [ -d $ROOT/$s/checkpoints ] && echo $ROOT/$s; done)
[ -z "$runs" ] || python examples/heal/paired_accuracy.py --keep-every 3 $runs --out $ROOT/paired.json \
  > $ROOT/paired.log 2>&1
