#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter, or fails with a message saying how to provide one.
# Order: $PYTHON, python3.12 (also through pyenv: the accelerator image runs 3.12), then newer ones, then python3.
set -u
check() { "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
try() { for cand in "$@"; do
  [ -z "$cand" ] && continue
  command -v "$cand" >/dev/null 2>&1 || continue
  if check "$cand"; then "$cand" -c 'import sys; print(sys.executable)'; exit 0; fi
done; }
try "${PYTHON:-}" python3.12
# pyenv shims refuse python3.12 unless a 3.12 version is selected; try the installed ones.
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])' | sort -V); do
    if PYENV_VERSION="$v" check python3; then PYENV_VERSION="$v" python3 -c 'import sys; print(sys.executable)'; exit 0; fi
  done
fi
try python3.13 python3.14 python3
echo "error: bolt_jax needs Python >= 3.12 and none was found (tried \$PYTHON, python3.12..python3.14, python3, pyenv)." >&2
echo "       Install one, or point to it: make test PYTHON=/path/to/python3.12" >&2
exit 1
