#!/usr/bin/env bash
# Search vs ORM best-of-N on the planted task (see README.md here): an SFT policy that
# samples the planted sequence ~27% of the time -> rollouts -> PRM-Q, ORM -> search.
# Each "problem" of planted's test split is the same prompt, so accuracy over 128 problems
# is the success rate of 128 independent searches.
#   bash experiments/search_vs_orm/run_planted.sh    # 2-core CPU, minutes
#   SFT_GAMMA=10 RUNS=runs/search_planted_g10 bash experiments/search_vs_orm/run_planted.sh
set -euo pipefail
R=${RUNS:-runs/search_planted}
MAIN="python -m pavjax.main"
# SFT references from mu_25 by default: an imperfect (~27%) policy; 10 gives a weaker one.
T="--config.task.sft_gamma=${SFT_GAMMA:-25}"

$MAIN --config=configs/sft.py:task=planted,size=test --workdir=$R/sft $T --config.train.num_steps=100
for split in train validation; do
  n=$([ $split = train ] && echo 512 || echo 64)
  $MAIN --config=configs/rollouts.py:task=planted,size=test --workdir=$R/rollouts $T \
    --config.policy.checkpoint=$R/sft/checkpoints --config.rollouts.split=$split \
    --config.rollouts.num_problems=$n --config.rollouts.n_cov=4 --config.rollouts.n_mc=8
done
for kind in q orm; do
  $MAIN --config=configs/train_verifier.py:task=planted,size=test,kind=$kind $T \
    --workdir=$R/verifier_$kind --config.init_from=$R/sft/checkpoints \
    --config.verifier.train_data=$R/rollouts/rollouts/train \
    --config.verifier.eval_data=$R/rollouts/rollouts/validation \
    --config.train.num_steps=600 --config.checkpoint.every=200
done
$MAIN --config=configs/search.py:task=planted,size=test --workdir=$R/search $T \
  --config.policy.checkpoint=$R/sft/checkpoints \
  --config.verifiers.q=$R/verifier_q/checkpoints --config.verifiers.orm=$R/verifier_orm/checkpoints \
  --config.search.beam_ns=${BEAM_NS:-2,4,8,16} --config.search.sweep_n=${SWEEP_N:-4}
cat $R/search/results.md
