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
#
# --aot-check first compiles every step of the command's config for the slice, here,
# without a TPU (`python -m pavjax.aot`, README "TPU pods"), and stops before any
# gcloud call when a step does not fit the chips' HBM (or the config is bad), so a
# configuration that cannot run never costs pod time. The topology comes from
# --accelerator (v5litepod-16 -> v5e:4x4, v5p-16 -> v5p:2x2x2, ...) or is given as
# --aot-topology=v5e:4x4; $PAVJAX_PYTHON (default python3) runs the check, in this
# checkout, with the command's --config and --config.* flags.
set -euo pipefail

NAME="" ZONE="" ACCEL="" VERSION="tpu-ubuntu2204-base" PROJECT="" DRY=0 AOT=0 AOT_TOPOLOGY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --dry-run) DRY=1 ;;
    --aot-check) AOT=1 ;;
    --aot-topology=*) AOT=1; AOT_TOPOLOGY="${1#*=}" ;;
    --) shift; break ;;
    *) echo "launch_tpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$NAME" || -z "$ZONE" || -z "$ACCEL" || $# -eq 0 ]]; then
  echo "usage: launch_tpu.sh --name=N --zone=Z --accelerator=A [--version=V] [--project=P]" \
       "[--dry-run] [--aot-check | --aot-topology=T] -- CMD..." >&2
  exit 2
fi

# The chips of a Cloud accelerator type as a topology: v5litepod-N and v6e-N count chips,
# v4-N and v5p-N TensorCores (two per chip). Default shapes of the common sizes only.
topology_of() {
  local gen="${1%-*}" n="${1##*-}" chips
  case "$gen" in
    v5litepod|v5e|v6e) chips="$n" ;;
    v4|v5p) chips=$((n / 2)) ;;
    *) return 1 ;;
  esac
  case "$gen" in v5litepod) gen=v5e ;; esac
  case "$gen:$chips" in
    v5e:1|v6e:1) echo "$gen:1x1" ;;
    v5e:4|v6e:4) echo "$gen:2x2" ;;
    v5e:8|v6e:8) echo "$gen:2x4" ;;
    v5e:16|v6e:16) echo "$gen:4x4" ;;
    v5e:32|v6e:32) echo "$gen:4x8" ;;
    v5e:64|v6e:64) echo "$gen:8x8" ;;
    v5e:128|v6e:128) echo "$gen:8x16" ;;
    v5e:256|v6e:256) echo "$gen:16x16" ;;
    v4:4|v5p:4) echo "$gen:2x2x1" ;;
    v4:8|v5p:8) echo "$gen:2x2x2" ;;
    v4:16|v5p:16) echo "$gen:2x2x4" ;;
    v4:32|v5p:32) echo "$gen:2x4x4" ;;
    v4:64|v5p:64) echo "$gen:4x4x4" ;;
    v4:128|v5p:128) echo "$gen:4x4x8" ;;
    v4:256|v5p:256) echo "$gen:4x8x8" ;;
    *) return 1 ;;
  esac
}

# 0. The AOT check, before any gcloud call.
if [[ $AOT -eq 1 ]]; then
  if [[ -z "$AOT_TOPOLOGY" ]] && ! AOT_TOPOLOGY="$(topology_of "$ACCEL")"; then
    echo "launch_tpu.sh: no default topology for --accelerator=$ACCEL; give" \
         "--aot-topology=<generation>:<chips>, e.g. v5e:4x4" >&2
    exit 2
  fi
  AOT_ARGS=()
  for a in "$@"; do
    case "$a" in --config=*|--config.*=*) AOT_ARGS+=("$a") ;; esac
  done
  if [[ ${#AOT_ARGS[@]} -eq 0 ]]; then
    echo "launch_tpu.sh: --aot-check needs a command with --config=..." >&2
    exit 2
  fi
  AOT_CMD=("${PAVJAX_PYTHON:-python3}" -m pavjax.aot --topology="$AOT_TOPOLOGY" "${AOT_ARGS[@]}")
  if [[ $DRY -eq 1 ]]; then
    line="$(printf '%q ' "${AOT_CMD[@]}")"
    echo "${line% }"
    echo "# only if the AOT check exits 0 (every step fits on $AOT_TOPOLOGY):"
  else
    echo "launch_tpu.sh: AOT check of the config for $AOT_TOPOLOGY" >&2
    rc=0
    "${AOT_CMD[@]}" || rc=$?
    if [[ $rc -ne 0 ]]; then
      echo "launch_tpu.sh: the AOT check failed (exit $rc) for $AOT_TOPOLOGY; no slice was" \
           "created or used" >&2
      exit "$rc"
    fi
  fi
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
