#!/usr/bin/env bash
# Healing a pruned SmolLM2-135M-Instruct (layers 12-15 removed) by OPD from the full model: one run per
# objective, one at a time, each in runs/heal/<arm>/ with its `/usr/bin/time -v` log in runs/heal/<arm>.log.
#   examples/heal_smollm2.sh                            # every arm, most informative first
#   examples/heal_smollm2.sh rkl topk_rkl_sg            # some arms
#   RESUME=1 examples/heal_smollm2.sh topk_rkl_renorm   # continue an interrupted arm from its last checkpoint
# Extra key=value overrides for every arm: EXTRA="optim.steps=24" examples/heal_smollm2.sh
set -euo pipefail
M=runs/smollm2-fp32
mkdir -p runs/heal
[ -f $M/model.safetensors ] || python examples/heal/export_fp32.py $M
[ -f examples/data/arith_words/heldout_solvable.jsonl ] || python examples/heal/solvable_heldout.py --model $M
ARMS=${*:-topk_rkl_tail topk_rkl_unnorm rkl topk_rkl_sg topk_rkl_renorm sampled_rkl sft}
for arm in $ARMS; do
  common="--config examples/heal_smollm2.yaml model.student=$M model.teacher=$M run.out=runs/heal/$arm ${EXTRA:-}"
  if [ "$arm" = sft ]; then     # off-policy: SFT on the teacher's greedy answers to the same prompts
    cmd="opdkit sft $common teacher.sft_traces=teacher rollout.sampler_dtype="
  else
    cmd="opdkit distill $common objective.name=$arm"
  fi
  echo "$(date -u +%H:%M:%S) $cmd ${RESUME:+--resume}"
  /usr/bin/time -v $cmd ${RESUME:+--resume} > runs/heal/$arm.log 2>&1 || echo "arm $arm failed: see runs/heal/$arm.log"
done
