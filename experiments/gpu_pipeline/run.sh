#!/usr/bin/env bash
# Every stage of configs/pipeline.py's one-GPU variant for a few steps, in one call, then
# the full run's projected time per stage (issue 19). On one H100/H200, from the
# repository root:
#
#   bash experiments/gpu_pipeline/run.sh                 # OUT=/tmp/pavjax_gpu_pipeline
#   VARIANT=task=planted,size=tiny bash experiments/gpu_pipeline/run.sh   # a CPU rehearsal
#
# The short run keeps each stage's model, batches and lengths (so a stage that fits here
# fits in the full run) and does a few units of its work: experiments/gpu_pipeline/project.py
# says which, and how the projection is made. Prints the GPU's peak memory (sampled every
# second by nvidia-smi; jax allocates on demand here) and the projection table, last.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/pavjax_gpu_pipeline}
VARIANT=${VARIANT:-size=gpu}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # memory.used then shows what the run holds

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 1000 \
    > "$OUT/memory.csv" &
  SMI=$!
fi
python -c 'import jax; print("jax", jax.__version__, jax.default_backend(), jax.devices()[0].device_kind)'

read -r -a SHORT <<< "$(python experiments/gpu_pipeline/project.py --overrides --variant="$VARIANT")"
# Without the overrides this would start the full run: stop instead.
[ "${#SHORT[@]}" -gt 0 ] || { echo "run.sh: project.py gave no overrides"; exit 2; }
t0=$(date +%s)
python -m pavjax.main --config="configs/pipeline.py:$VARIANT" --workdir="$OUT/run" "${SHORT[@]}" \
  2>&1 | tee "$OUT/pipeline.log"
rc=${PIPESTATUS[0]}
echo "pipeline: exit $rc after $(( $(date +%s) - t0 )) s"
if [ -n "${SMI:-}" ]; then
  kill "$SMI"
  sort -t, -k2 -n "$OUT/memory.csv" | tail -1 | awk -F, '{print "peak GPU memory used: " $2 " MiB"}'
fi
python experiments/gpu_pipeline/project.py --workdir="$OUT/run" --variant="$VARIANT" \
  --json="$OUT/projection.json"
exit "$rc"
