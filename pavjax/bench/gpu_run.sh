#!/usr/bin/env bash
# Issue 20's GPU measurements in one call on one H100 or H200 (bf16), the summary table last.
#
#   bash pavjax/bench/gpu_run.sh            # from the repository root; about 7-10 minutes
#   OUT=/some/dir bash pavjax/bench/gpu_run.sh
#
# Needs jax with CUDA (pip install -e ".[gpu,bench]") and, for the transformers column,
# torch with CUDA and transformers. Writes the benches' logs and JSON to $OUT and prints,
# last, one table of what the issue asks for: decode tok/s and % of the bandwidth floor of
# the bytes read (125m, batch 64/256, caches 1024/2048 half full) beside transformers'
# generate(), and the rollouts' and the beam search's continuous / static batching ratios. The prefill bench's own
# table (query chunks against one chunk, transformers' forward) comes just before it.
set -uo pipefail
OUT=${OUT:-/tmp/pavjax_gpu_run}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch shares the card in bench.decode

python -c 'import jax, sys; b = jax.default_backend(); print("jax", jax.__version__, b, jax.devices()[0].device_kind); sys.exit(b != "gpu")' \
  || { echo "gpu_run.sh: jax sees no GPU (install jax[cuda12]: pip install -e '.[gpu,bench]')"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# Each bench under its own limit (585 s in all), so one overrun still leaves the others'
# numbers.
timeout 280 python -m pavjax.bench.decode --runs=3 --json="$OUT/decode.json" 2>&1 | tee "$OUT/decode.log"
timeout 170 python -m pavjax.bench.rollouts --trajectories=256 --runs=3 --skip_per_prefix \
  --skip_independent --json="$OUT/rollouts.json" 2>&1 | tee "$OUT/rollouts.log"
# Step-level beam search, static (lockstep) against continuous batching.
timeout 90 python -m pavjax.bench.beam --runs=2 --json="$OUT/beam.json" 2>&1 | tee "$OUT/beam.log"
# Long-prompt prefill, attention in query chunks of 256 against one chunk (its own table).
timeout 45 python -m pavjax.bench.prefill --runs=3 --json="$OUT/prefill.json" 2>&1 \
  | tee "$OUT/prefill.log"

python -m pavjax.bench.summary "$OUT"
