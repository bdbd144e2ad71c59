#!/usr/bin/env bash
# Reproduces experiments/search_vs_orm/README.md: SFT policy -> rollouts (seeds + MC Q)
# -> PRM-Q and ORM verifiers -> every search method against compute.
# Each job resumes or skips finished work, so rerunning after an interruption is safe.
#   bash experiments/search_vs_orm/run.sh            # arith, tiny (2-core CPU)
#   SIZE=25m bash experiments/search_vs_orm/run.sh   # a GPU-sized run
set -euo pipefail
SIZE=${SIZE:-tiny}
R=${RUNS:-runs/search_vs_orm_$SIZE}
SFT=${SFT:-runs/sft_arith_default_tiny}  # arith at its default difficulty, 1,500 SFT steps
MAIN="python -m pavjax.main"

$MAIN --config=configs/sft.py:task=arith,size=$SIZE --workdir=$SFT
for split in train validation; do
  n=$([ $split = train ] && echo 512 || echo 64)
  $MAIN --config=configs/rollouts.py:task=arith,size=$SIZE --workdir=$R/rollouts \
    --config.policy.checkpoint=$SFT/checkpoints --config.rollouts.split=$split \
    --config.rollouts.num_problems=$n --config.rollouts.n_cov=4 --config.rollouts.n_mc=4
done
for kind in q orm; do
  $MAIN --config=configs/train_verifier.py:task=arith,size=$SIZE,kind=$kind \
    --workdir=$R/verifier_$kind --config.init_from=$SFT/checkpoints \
    --config.verifier.train_data=$R/rollouts/rollouts/train \
    --config.verifier.eval_data=$R/rollouts/rollouts/validation \
    --config.train.num_steps=800 --config.checkpoint.every=200
done
$MAIN --config=configs/search.py:task=arith,size=$SIZE --workdir=$R/search \
  --config.policy.checkpoint=$SFT/checkpoints \
  --config.verifiers.q=$R/verifier_q/checkpoints --config.verifiers.orm=$R/verifier_orm/checkpoints \
  --config.search.beam_ns=${BEAM_NS:-2,4,8,16} --config.search.sweep_n=${SWEEP_N:-4}
cat $R/search/results.md
