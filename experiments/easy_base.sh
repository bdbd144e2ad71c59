#!/usr/bin/env bash
# The easy-arith start point of experiments/rl_vs_orm and experiments/search_vs_orm/run_easy.sh:
# the first stages of the arith tiny pipeline (README command 1 until 2026-12-06) with the
# step counts their results were taken with (SFT 800 steps, PRM-Q 200; the variant itself
# now runs fewer, to fit in ten minutes). Complete stages are skipped, so every caller may run it.
#   bash experiments/easy_base.sh [STAGES]  # default: through the PRM-Q; PIPE= sets the workdir
set -euo pipefail
python -m pavjax.main --config=configs/pipeline.py:size=tiny --workdir="${PIPE:-runs/easy_base}" \
  --config.only="${1:-sft,rft,rollouts_train,rollouts_validation,verifier_q}" \
  --config.stages.sft.train.num_steps=800 --config.stages.verifier_q.train.num_steps=200 \
  --config.stages.verifier_q.checkpoint.every=100
