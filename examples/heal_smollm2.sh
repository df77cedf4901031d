#!/usr/bin/env bash
# Healing a pruned SmolLM2-135M-Instruct (layers 12-15 removed) by OPD from the full model: one run per
# objective, one at a time, each in runs/heal/<arm>/ with its `/usr/bin/time -v` log in runs/heal/<arm>.log.
#   examples/heal_smollm2.sh                            # every arm, most informative first
#   examples/heal_smollm2.sh rkl topk_rkl_sg            # some arms
#   RESUME=1 examples/heal_smollm2.sh topk_rkl_renorm   # continue an interrupted arm from its last checkpoint
# Extra key=value overrides for every arm: EXTRA="optim.steps=24" examples/heal_smollm2.sh
# Session 5's budget (64 tokens, larger held-out set): CONFIG=examples/heal64_smollm2.yaml ROOT=runs/heal64 \
#   examples/heal_smollm2.sh topk_rkl_tail      (M=<dir> names the fp32 export; /work/models/smollm2-fp32 if present)
set -euo pipefail
M=${M:-$([ -f /work/models/smollm2-fp32/model.safetensors ] && echo /work/models/smollm2-fp32 || echo runs/smollm2-fp32)}
CONFIG=${CONFIG:-examples/heal_smollm2.yaml}
ROOT=${ROOT:-runs/heal}
mkdir -p $ROOT
[ -f $M/model.safetensors ] || python examples/heal/export_fp32.py $M
[ -f examples/data/arith_words/heldout_solvable.jsonl ] || python examples/heal/solvable_heldout.py --model $M
ARMS=${*:-topk_rkl_tail topk_rkl_unnorm rkl topk_rkl_sg topk_rkl_renorm sampled_rkl sft}
for arm in $ARMS; do
  common="--config $CONFIG model.student=$M model.teacher=$M run.out=$ROOT/$arm ${EXTRA:-}"
  if [ "$arm" = sft ]; then     # off-policy: SFT on the teacher's greedy answers to the same prompts
    cmd="opdkit sft $common teacher.sft_traces=teacher rollout.sampler_dtype="
  else
    cmd="opdkit distill $common objective.name=$arm"
  fi
  echo "$(date -u +%H:%M:%S) $cmd ${RESUME:+--resume}"
  /usr/bin/time -v $cmd ${RESUME:+--resume} > $ROOT/$arm.log 2>&1 || echo "arm $arm failed: see $ROOT/$arm.log"
done
