#!/usr/bin/env bash
# PAV-RL vs ORM-RL on arith from one RFT init (arXiv 2410.08146, Sec. 5, App. E); see README.md here.
#   bash experiments/rl_vs_orm/run.sh     # 2-core CPU, easy arith, 0.8M params
# It starts from the RFT policy and PRM-Q of experiments/easy_base.sh (the tiny pipeline's
# first stages). Every run resumes from its checkpoints: rerunning after an interruption is safe.
set -euo pipefail
export PIPE=${PIPE:-runs/easy_base}
R=${RUNS:-runs/rl_vs_orm}
SEEDS=${SEEDS:-"0 1"}
STEPS=${STEPS:-120}
LR=${LR:-1e-4}
OUT=${OUT:-experiments/rl_vs_orm}  # where report.py writes results.md and the plots
MAIN="python -m pavjax.main"
common="--config.init_from=$PIPE/rft/checkpoints --config.rl.prover.verifier=$PIPE/verifier_q/checkpoints
  --config.train.num_steps=$STEPS --config.train.eval_every=20 --config.checkpoint.every=40
  --config.optim.lr=$LR --config.rl.eval_pass_ns=1,4,16 ${EXTRA:-}"  # EXTRA: more overrides
bash experiments/easy_base.sh
# difficulty=easy: the tiny pipeline's arith (pavjax.tasks.arith.DIFFICULTIES['easy']).
rl() { $MAIN --config=configs/rl.py:task=arith,size=tiny,difficulty=easy,$1 --workdir=$R/$2 $common "${@:3}"; }

ONLY=${ONLY:-"outcome pav_exact pav_bo4 qbonus_exact sft alpha"}  # which groups to run
want() { [[ " $ONLY " == *" $1 "* ]]; }

for seed in $SEEDS; do
  want outcome && rl reward=outcome outcome_seed$seed --config.seed=$seed
  # the exact line prover mu (per-line accuracy 0.8): PAV-RL apart from verifier quality
  want pav_exact && rl reward=pav,prover=procedural pav_exact_seed$seed --config.seed=$seed
  # the learned PRM-Q with a Best-of-4 prover, as the paper does
  want pav_bo4 && rl reward=pav,prover=bok pav_bo4_seed$seed --config.seed=$seed
  # the paper's negative control: Q^mu instead of A^mu as the dense term
  want qbonus_exact && rl reward=q_bonus,prover=procedural qbonus_exact_seed$seed --config.seed=$seed
done
# Pass@N of the SFT policy itself: the iteration-0 evaluation of a 1-iteration run from SFT.
want sft && rl reward=outcome sft_start --config.init_from=$PIPE/sft/checkpoints \
  --config.train.num_steps=1 --config.train.eval_every=1 --config.checkpoint.every=1
if want alpha; then
  for alpha in 0.5 1 5; do  # alpha sweep (the runs above use 3)
    rl reward=pav,prover=procedural pav_exact_alpha$alpha --config.rl.alpha=$alpha
  done
fi
python experiments/rl_vs_orm/report.py --runs=$R --out=$OUT
