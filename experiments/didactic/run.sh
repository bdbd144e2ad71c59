#!/usr/bin/env bash
# The paper's didactic experiment (Fig. 3) on the planted task; see README.md beside this file.
#   bash experiments/didactic/run.sh        # 2-core CPU
#   SIZE=made RUNS=runs/didactic_made GAMMAS="" OUT=experiments/didactic/made \
#     bash experiments/didactic/run.sh      # (a) and (c) with the MADE-style MLP policy
#   SETTING=paper ...                       # the paper's didactic RL and SFT (configs/rl.py,
#                                           # configs/sft.py: setting=paper) instead of pavjax's
# Each run resumes from its checkpoints, so rerunning after an interruption is safe.
set -euo pipefail
R=${RUNS:-runs/didactic}
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-400}
GAMMAS=${GAMMAS-"1 3 5 8 10 12 15 17"}  # GAMMAS="" skips (b)
GAMMA_STEPS=${GAMMA_STEPS:-$((STEPS / 2))}  # iterations of each (b) run
MAIN="python -m pavjax.main"
SIZE=${SIZE:-test}  # made: the paper's MADE-style 3x128 MLP policy
SETTING=${SETTING:-pavjax}  # pavjax: KL 0.001 + value baseline; paper: KL 0 + batch mean
RL="configs/rl.py:task=planted,size=$SIZE,prover=procedural,setting=$SETTING"

# SFT init: 50 steps, batch 64, on 3,200 samples of mu_5 (the paper's setting).
$MAIN --config=configs/sft.py:task=planted,size=$SIZE,setting=$SETTING --workdir=$R/sft
common="--config.init_from=$R/sft/checkpoints --config.rl.eval_pass_ns=1,2,4,8,16,32,64"
# (a) + (c): PAV (exact mu_10 prover, alpha 1) vs outcome-only, several seeds.
for seed in $SEEDS; do
  for reward in pav outcome; do
    $MAIN --config=$RL,reward=$reward --workdir=$R/${reward}_seed$seed $common \
      --config.seed=$seed --config.train.num_steps=$STEPS --config.train.eval_every=50
  done
done
# (b): the prover's strength gamma, every seed, a shorter run.
for seed in $SEEDS; do
  for gamma in $GAMMAS; do
    $MAIN --config=$RL,reward=pav --workdir=$R/gamma${gamma}_seed$seed $common \
      --config.seed=$seed --config.rl.prover.gamma=$gamma \
      --config.train.num_steps=$GAMMA_STEPS --config.train.eval_every=50
  done
done
python experiments/didactic/report.py --runs=$R --out=${OUT:-experiments/didactic}
