#!/bin/bash
# RLHF stage, step 2: PPO on the learned reward r̂ of fit_reward.py, started from
# (and KL-regularised to) a mid-training snapshot π_ref, for several β_KL.
# Every run logs proxy (r̂) and true reward per update (metrics.jsonl) and ends
# with a deterministic evaluation on the true reward (evals.jsonl).
set -e
TASK=${TASK:-target-speed}
STEPS=${STEPS:-300000}
OUT=experiments/rlhf/$TASK
REF=${REF:-experiments/experts/$TASK/snapshots/step_000200704.npz}
for BETA in ${BETAS:-0 0.01 0.1 1.0 3.0 10.0}; do
  # β = 0: no penalty, but the KL to π_ref is still measured (metric ref_kl).
  EXTRA="--reference $REF --kl-ref-coef $BETA"
  prefrl train ppo --task $TASK --reward-model $OUT/rm.npz --init-checkpoint $REF $EXTRA \
    --total-steps $STEPS --eval-every 15 --checkpoint-every 0 --snapshots --progress false \
    --out-dir $OUT/kl_$BETA > $OUT/kl_$BETA.json
  rm -f $OUT/kl_$BETA/last.npz
done
