#!/usr/bin/env bash
# search_vs_orm on arith's `easy` difficulty, from the SFT policy of experiments/easy_base.sh
# (the tiny pipeline's, 800 steps), with 8x that pipeline's rollout budget and 5x (PRM-Q) and
# 2.5x (ORM) its verifier steps, so that the verifiers have a chance to rank. 2-core CPU; every
# job resumes or skips finished work, so rerunning after an interruption is safe.
#   bash experiments/search_vs_orm/run_easy.sh
set -euo pipefail
export PIPE=${PIPE:-runs/easy_base}
R=${RUNS:-runs/search_vs_orm_easy}
SFT=$PIPE/sft
NTRAIN=${NTRAIN:-768}
QSTEPS=${QSTEPS:-1000}
ORMSTEPS=${ORMSTEPS:-500}
MAIN="python -m pavjax.main"
V="task=arith,size=tiny,difficulty=easy"  # the tiny pipeline's arith

bash experiments/easy_base.sh sft

for split in train validation; do
  n=$([ $split = train ] && echo $NTRAIN || echo 64)
  $MAIN --config=configs/rollouts.py:$V --workdir=$R/rollouts \
    --config.policy.checkpoint=$SFT/checkpoints --config.rollouts.split=$split \
    --config.rollouts.num_problems=$n --config.rollouts.n_cov=4 --config.rollouts.n_mc=4
done
for kind in q orm; do
  steps=$([ $kind = q ] && echo $QSTEPS || echo $ORMSTEPS)
  $MAIN --config=configs/train_verifier.py:$V,kind=$kind \
    --workdir=$R/verifier_$kind --config.init_from=$SFT/checkpoints \
    --config.verifier.train_data=$R/rollouts/rollouts/train \
    --config.verifier.eval_data=$R/rollouts/rollouts/validation \
    --config.train.num_steps=$steps --config.checkpoint.every=250
done
$MAIN --config=configs/search.py:$V --workdir=$R/search \
  --config.policy.checkpoint=$SFT/checkpoints \
  --config.verifiers.q=$R/verifier_q/checkpoints --config.verifiers.orm=$R/verifier_orm/checkpoints \
  --config.search.num_problems=${NPROB:-128} --config.search.ns=${NS:-1,2,4,8,16,32,64} \
  --config.search.beam_ns=${BEAM_NS:-2,4,8} --config.search.sweep_n=${SWEEP_N:-0}
cat $R/search/results.md
