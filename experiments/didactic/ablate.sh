#!/usr/bin/env bash
# (b) one change at a time between the two settings of the MADE runs (README.md beside this
# file), on pavjax's SFT policy, KL 0:
#   CELL=kl0_value bash experiments/didactic/ablate.sh  # pavjax's RL with KL 0 (value head)
#   CELL=kl0_batch bash experiments/didactic/ablate.sh  # the paper's RL (KL 0, batch mean)
# Needs runs/didactic_made_pavjax/sft (SIZE=made SETTING=pavjax ... run.sh). Runs resume.
set -euo pipefail
CELL=${CELL:?CELL=kl0_value or kl0_batch}
SEEDS=${SEEDS:-"0 1 2 3 4"}
GAMMAS=${GAMMAS:-"1 3 10 17"}
SFT=${SFT:-runs/didactic_made_pavjax/sft}
R=${RUNS:-runs/didactic_made_$CELL}
case $CELL in
  kl0_value) SETTING=pavjax ;;
  kl0_batch) SETTING=paper ;;
  *) echo "CELL=$CELL: kl0_value or kl0_batch" >&2; exit 2 ;;
esac
RL="configs/rl.py:task=planted,size=made,prover=procedural,reward=pav,setting=$SETTING"
mkdir -p "$R" && ln -sfn "$(realpath "$SFT")" "$R/sft"  # report.py reads the SFT's config
for seed in $SEEDS; do
  for gamma in $GAMMAS; do
    python -m pavjax.main --config=$RL --workdir=$R/gamma${gamma}_seed$seed \
      --config.init_from=$SFT/checkpoints --config.rl.kl_coef=0 \
      --config.rl.eval_pass_ns=1,2,4,8,16,32,64 --config.seed=$seed \
      --config.rl.prover.gamma=$gamma --config.train.num_steps=200 --config.train.eval_every=50
  done
done
python experiments/didactic/report.py --runs=$R --out=${OUT:-experiments/didactic/made_$CELL}
