#!/bin/bash
# One call on a lent GPU (the `device` tool): bench/gpu_session.sh [STAGE...], STAGE one of
#   headline (the default)   every headline figure: bench/headline.py with its exact arguments
#   train_packed train_concat attention score estep decode decode_kernels   some of them (one headline run);
#                            aliases: train = train_packed,train_concat; sampler = decode
#   env profile dryrun       the GPU and versions; a profiler trace of the train step; the memory dry run
#   decode_attention         the decode attention kernels alone (bench/decode_kernels.py: XLA, Triton, the Mosaic GPU
#                            kernel in its one- and two-warpgroup layouts; about 30 s), its results into $OUT
#   mlp_backward             the headline's packed train step with the SwiGLU's own backward and with autodiff's,
#                            side by side (bench/train_step.py --mlp_backward custom,autodiff; about 3 minutes)
#   cmd                      "$CMD" as given, e.g. CMD="python3 bench/attention.py --sweep"
# (The SmolLM2 run of configs/smol_gsm8k.py has its own two-call script, bench/gpu_smol.sh: its model is over one
# call's 64 MiB.)
# Installs the carried wheels (.whl/: ml-collections, which the image lacks; tokamax and its dependencies only for
# the tokamax rows of bench/attention.py), then runs each stage under its own timeout with its log in $OUT.
# The headline writes bench/results/<date>-<device>/ under /tmp/bolt_results and packs it into
# $OUT/headline_results.tar.gz (the tool returns at most 8 files, 2 folders down), plus $OUT/headline.txt to read
# at once. Back here: tar -xzf <files_at>/headline_results.tar.gz -C bench/results
# BOLT_COMMIT names the commit (the copy has no .git). Before the first call, here (not on the GPU machine):
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl ml-collections
#   (for the tokamax rows, the same with --no-deps for: tokamax==0.0.17 einshape immutabledict jaxtyping wadler-lindig
#    pydantic pydantic-core annotated-types typing-inspection qwix xprof fire termcolor gviz-api tqdm tensorboardx,
#    adding --platform manylinux_2_27_x86_64 --platform any; about 37 MB in all)
# and check, here, that every headline program fits the lent GPU's memory (bench/gpu_preflight.py: 6 minutes, no GPU):
#   JAX_PLATFORMS=cpu python bench/gpu_preflight.py --gpu h100     # or --gpu h200
# then pass carry=[".whl"] to the device tool's run, e.g. command:
#   BOLT_COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_session.sh headline      (timeout_s 600)
set -u
OUT=${OUT:-/tmp/bolt_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T=${STAGE_TIMEOUT:-300}
HEADLINE_STEPS=" train_packed train_concat attention score estep decode decode_kernels "
[ $# -eq 0 ] && set -- headline

# the stages that are headline steps run together, in one headline (one results folder)
steps=()
others=()
for stage in "$@"; do
  case $stage in
    headline) steps+=(all);;
    train) steps+=(train_packed train_concat);;
    sampler) steps+=(decode);;
    *) if [[ $HEADLINE_STEPS == *" $stage "* ]]; then steps+=("$stage"); else others+=("$stage"); fi;;
  esac
done
if [ ${#steps[@]} -gt 0 ]; then
  only=()
  [[ " ${steps[*]} " != *" all "* ]] && only=(--only "$(IFS=,; echo "${steps[*]}")")
  echo "=== headline ${only[*]} ($(date +%H:%M:%S))"
  rm -rf /tmp/bolt_results
  python3 bench/headline.py --results_root /tmp/bolt_results "${only[@]}" --budget_s "${HEADLINE_BUDGET:-540}"
  echo "exit $? ($(date +%H:%M:%S))"
  tar -czf "$OUT/headline_results.tar.gz" -C /tmp/bolt_results .
  cp /tmp/bolt_results/*/headline.txt "$OUT/" 2>/dev/null
fi

for stage in "${others[@]}"; do
  echo "=== $stage ($(date +%H:%M:%S))"
  case $stage in
    env) cmd=(bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; \
python3 -c 'import jax, flax, optax; print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__, jax.devices()); \
from jax._src.lib import cuda_versions as c; print(\"cuda runtime\", c.cuda_runtime_get_version() if c else None)'");;
    profile) cmd=(bash -c "python3 bench/train_step.py ${PROFILE_ARGS:---micro_batches 16 --docs 4 --remat none} \
--warmup 2 --runs 3 --profile /tmp/prof && python3 bench/trace_summary.py /tmp/prof --top 30; \
cp \$(find /tmp/prof -name perfetto_trace.json.gz | head -1) $OUT/trace.json.gz");;
    dryrun) cmd=(python3 -m bolt_jax.main --config configs/train_synthetic.py:tinyllama_1.1b_bolt --config.dry_run=True \
--config.data.seq_len=2048 --config.train.global_batch_size=${DRY_BATCH:-16} --config.mesh.fsdp=1);;
    decode_attention) cmd=(python3 bench/decode_kernels.py --results "$OUT");;
    mlp_backward) cmd=(python3 bench/train_step.py --micro_batches 16 --docs 4 --mlp_backward custom,autodiff \
--runs 10 --json "$OUT/train_step_mlp_backward.json");;
    cmd) cmd=(bash -c "${CMD:?set CMD to the command to run}");;
    *) echo "unknown stage $stage"; continue;;
  esac
  timeout "$T" "${cmd[@]}" > "$OUT/$stage.log" 2>&1
  echo "exit $? ($(date +%H:%M:%S))"
  grep -v "^\s*$" "$OUT/$stage.log" | grep -v "Warning\|warn(" | tail -n ${TAIL:-40}
done
