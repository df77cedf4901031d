#!/usr/bin/env bash
# OPSD of "Answer in one short sentence." into SmolLM2-135M-Instruct (RESULTS.md, issue 18): one run whose
# evaluations (steps 0, 4, 8; step 0 with the rule-conditioned teacher) give rule rate, accuracy and KL.
#   examples/opsd_short_smollm2.sh          (RESUME=1 to continue an interrupted run)
set -euo pipefail
M=runs/smollm2-fp32
mkdir -p runs
[ -f $M/model.safetensors ] || python examples/heal/export_fp32.py $M
[ -f examples/data/arith_words/heldout_solvable.jsonl ] || python examples/heal/solvable_heldout.py --model $M
/usr/bin/time -v opdkit self-distill --config examples/opsd_short_smollm2.yaml model.student=$M ${RESUME:+--resume} \
  > runs/opsd-short.log 2>&1
