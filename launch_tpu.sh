#!/usr/bin/env bash
# Launch one pavjax command on every worker of a Cloud TPU VM slice.
#
#   ./launch_tpu.sh --name=pav-v4 --zone=us-central2-b --accelerator=v4-32 \
#       [--version=tpu-ubuntu2204-base] [--dry-run] -- \
#       python -m pavjax.main --config=configs/sft.py:task=arith,size=125m --workdir=gs://b/run
#
# Steps: create the slice if it does not exist, copy this checkout to every worker,
# create the venv there once (skipped when it already exists), then run the same
# command on all workers with PAVJAX_DISTRIBUTED=1, which makes pavjax.main call
# jax.distributed.initialize(). --dry-run prints every gcloud command instead.
set -euo pipefail

NAME="" ZONE="" ACCEL="" VERSION="tpu-ubuntu2204-base" DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --dry-run) DRY=1 ;;
    --) shift; break ;;
    *) echo "launch_tpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$NAME" || -z "$ZONE" || -z "$ACCEL" || $# -eq 0 ]]; then
  echo "usage: launch_tpu.sh --name=N --zone=Z --accelerator=A [--version=V] [--dry-run] -- CMD..." >&2
  exit 2
fi
CMD="$*"
REMOTE_DIR="pavjax"

run() {
  if [[ $DRY -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

TPU=(gcloud compute tpus tpu-vm)
if [[ $DRY -eq 1 ]] || ! "${TPU[@]}" describe "$NAME" --zone="$ZONE" >/dev/null 2>&1; then
  run "${TPU[@]}" create "$NAME" --zone="$ZONE" --accelerator-type="$ACCEL" --version="$VERSION"
fi

ARCHIVE="$(mktemp -d)/pavjax.tar.gz"
run git archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${TPU[@]}" scp "$ARCHIVE" "$NAME:~/pavjax.tar.gz" --zone="$ZONE" --worker=all
SETUP="mkdir -p $REMOTE_DIR && tar -xzf ~/pavjax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && \
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'; fi"
run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all --command="$SETUP"
run "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all \
  --command="cd $REMOTE_DIR && source .venv/bin/activate && PAVJAX_DISTRIBUTED=1 $CMD"
