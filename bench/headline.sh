#!/bin/bash
# Every headline figure in one command (bench/headline.py's docstring says what and how long):
#   bench/headline.sh                 # on a GPU: bench/results/<date>-<device>/{*.log,*.json,headline.json}
#   bench/headline.sh --smoke         # tiny shapes on this CPU: bench/results/<date>-cpu-smoke/
# Runs from the repository root with the venv's python when there is one (PYTHON overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" bench/headline.py "$@"
