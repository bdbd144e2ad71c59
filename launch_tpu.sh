#!/usr/bin/env bash
# Launch one pavjax command on every worker of a Cloud TPU VM slice.
#
#   ./launch_tpu.sh --name=pav-v4 --zone=us-central2-b --accelerator=v4-32 \
#       [--version=tpu-ubuntu2204-base] [--project=P] [--dry-run] -- \
#       python -m pavjax.main --config=configs/sft.py:task=arith,size=125m --workdir=/mnt/shared/sft
#
# The workdir must be one directory that every worker sees (a Filestore/NFS or
# gcsfuse mount): all processes write their shards of each checkpoint into it,
# and paths are local (a gs:// URL would become a local directory named gs:).
# Steps: reuse the slice if `describe` finds it, else create it; copy this checkout
# (git archive of HEAD) to every worker; create the venv there once (skipped when
# it already exists); then run the same command on all workers at once with
# PAVJAX_DISTRIBUTED=1, which makes pavjax.main call jax.distributed.initialize().
# --dry-run prints every gcloud command (one per line, shell-quoted) instead of
# running it, and touches nothing.
set -euo pipefail

NAME="" ZONE="" ACCEL="" VERSION="tpu-ubuntu2204-base" PROJECT="" DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --dry-run) DRY=1 ;;
    --) shift; break ;;
    *) echo "launch_tpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$NAME" || -z "$ZONE" || -z "$ACCEL" || $# -eq 0 ]]; then
  echo "usage: launch_tpu.sh --name=N --zone=Z --accelerator=A [--version=V] [--project=P]" \
       "[--dry-run] -- CMD..." >&2
  exit 2
fi
# The command, each argument shell-quoted, so that arguments with spaces survive ssh.
CMD="$(printf '%q ' "$@")"
CMD="${CMD% }"
REMOTE_DIR="pavjax"

run() {
  if [[ $DRY -eq 1 ]]; then
    local line
    line="$(printf '%q ' "$@")"
    echo "${line% }"
  else
    "$@"
  fi
}

TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then WHERE+=(--project="$PROJECT"); fi

# 1. Create the slice unless it exists.
CREATE=("${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCEL" --version="$VERSION")
if [[ $DRY -eq 1 ]]; then
  run "${TPU[@]}" describe "$NAME" "${WHERE[@]}"
  echo "# only if describe fails (no slice named $NAME yet):"
  run "${CREATE[@]}"
elif "${TPU[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  echo "launch_tpu.sh: reusing TPU VM $NAME in $ZONE" >&2
else
  "${CREATE[@]}"
fi

# 2. Copy the code (what HEAD holds; uncommitted edits are not copied).
if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  echo "launch_tpu.sh: warning: uncommitted changes are not copied (git archive HEAD)" >&2
fi
ARCHIVE="${TMPDIR:-/tmp}/pavjax-launch-$NAME.tar.gz"
run git archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${TPU[@]}" scp "$ARCHIVE" "$NAME:~/pavjax.tar.gz" "${WHERE[@]}" --worker=all

# 3. Unpack on every worker; build the venv only where there is none yet.
SETUP="mkdir -p $REMOTE_DIR && tar -xzf ~/pavjax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && \
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'; fi"
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$SETUP"

# 4. The same command everywhere, with distributed initialization on.
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all \
  --command="cd $REMOTE_DIR && source .venv/bin/activate && PAVJAX_DISTRIBUTED=1 $CMD"
