#!/usr/bin/env bash
# Run the same command on every worker of a TPU VM slice (v4/v5e/v5p/v6e pods):
#   launch/tpu_pod.sh TPU_NAME ZONE --install                      # once: .venv with the pinned TPU versions
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG [--config.key=value ...]
# Assumes the repository is checked out at the same path on every worker (set REPO_DIR to override). --install
# makes its .venv there on every worker: PYTHON (default python3.12; the stock TPU VM images ship an older Python,
# install 3.12 first) -m venv .venv, then pip install -c constraints/tpu.txt -e '.[tpu]' (README "Install").
# jax.distributed.initialize() discovers the slice on TPU VMs (config.distributed.mode=auto).
# Each worker logs to REPO_DIR/runs/tpu_pod/worker_<id>.log; worker 0's run writes config.run_dir (use a gs:// path or
# a shared filesystem for checkpoints on multi-host slices: every worker writes its own shards).
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 TPU_NAME ZONE {--install | CONFIG [--config.key=value ...]}" >&2; exit 2; fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; shift 3
REPO_DIR=${REPO_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
if [ "$CONFIG" = "--install" ]; then
  CMD="cd $REPO_DIR && ${PYTHON:-python3.12} -m venv .venv && .venv/bin/python -m pip install -q --upgrade pip && \
.venv/bin/python -m pip install -q -c constraints/tpu.txt -e '.[tpu]' && .venv/bin/python -c 'import bolt_jax, jax; print(jax.__version__)'"
  exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$CMD"
fi
ARGS=$(printf ' %q' "$@")
CMD="cd $REPO_DIR && mkdir -p runs/tpu_pod && PY=\$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 ) && \
\$PY -m bolt_jax.main --config $CONFIG$ARGS > runs/tpu_pod/worker_\$(hostname).log 2>&1"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$CMD"
