#!/usr/bin/env bash
# N JAX processes on this host, each with simulated CPU devices, joined through jax.distributed: a multi-host
# run without a cluster, for testing. Usage:
#   launch/local.sh N CONFIG [--config.key=value ...]
# Environment: DEVICES_PER_PROCESS (default 4), PORT (default: a free one), PYTHON (default .venv/bin/python or python3),
#              LOG_DIR (default runs/local_launch): each process logs to LOG_DIR/process_<i>.log; process 0 also to stdout.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 N CONFIG [--config.key=value ...]" >&2; exit 2; fi
N=$1; CONFIG=$2; shift 2
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEVICES=${DEVICES_PER_PROCESS:-4}
PORT=${PORT:-$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOG_DIR=${LOG_DIR:-runs/local_launch}
mkdir -p "$LOG_DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < N; i++)); do
  env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES" \
      BOLT_COORDINATOR="127.0.0.1:$PORT" BOLT_NUM_PROCESSES="$N" BOLT_PROCESS_ID="$i" \
      "$PY" -m bolt_jax.main --config "$CONFIG" "$@" > "$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
tail -f "$LOG_DIR/process_0.log" --pid "${pids[0]}" &
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
[ $status -eq 0 ] || { echo "a process failed (exit $status); logs in $LOG_DIR" >&2; cleanup; }
exit $status
