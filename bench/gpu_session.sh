#!/bin/bash
# One call on a lent GPU (the `device` tool): bench/gpu_session.sh STAGE... with STAGE in
#   env attention train sampler estep dryrun
# Installs the carried wheels (.whl/: ml-collections, and tokamax with its dependencies, which the image lacks), then runs each stage under
# its own timeout and keeps its log in $OUT/<stage>.log. BOLT_COMMIT names the commit (the copy has no .git).
# Before the first call, here (not on the GPU machine):
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl ml-collections
#   (for the tokamax rows, the same with --no-deps for: tokamax==0.0.17 einshape immutabledict jaxtyping wadler-lindig
#    pydantic pydantic-core annotated-types typing-inspection qwix xprof fire termcolor gviz-api tqdm tensorboardx,
#    adding --platform manylinux_2_27_x86_64 --platform any; about 37 MB in all)
# and pass carry=[".whl"] to the device tool's run.
set -u
OUT=${OUT:-/tmp/bolt_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T=${STAGE_TIMEOUT:-300}
for stage in "$@"; do
  echo "=== $stage ($(date +%H:%M:%S))"
  case $stage in
    env) cmd=(bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; \
python3 -c 'import jax, flax, optax; print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__, jax.devices()); \
from jax._src.lib import cuda_versions as c; print(\"cuda runtime\", c.cuda_runtime_get_version() if c else None)'");;
    attention) cmd=(python3 bench/attention.py ${ATTN_ARGS:---sweep});;
    train) cmd=(python3 bench/train_step.py ${TRAIN_ARGS:---micro_batches 8,16 --remat none --attention auto});;
    sampler) cmd=(python3 bench/sampler.py ${SAMPLER_ARGS:---batch 64,256});;
    estep) cmd=(python3 bench/estep.py ${ESTEP_ARGS:-});;
    profile) cmd=(bash -c "python3 bench/train_step.py ${PROFILE_ARGS:---micro_batches 8 --remat none} --warmup 2 --runs 3 \
--profile /tmp/prof && python3 bench/trace_summary.py /tmp/prof --top 30; \
cp \$(find /tmp/prof -name perfetto_trace.json.gz | head -1) $OUT/trace.json.gz");;
    dryrun) cmd=(python3 -m bolt_jax.main --config configs/train_synthetic.py:tinyllama_1.1b_bolt --config.dry_run=True \
--config.data.seq_len=2048 --config.train.global_batch_size=${DRY_BATCH:-16} --config.mesh.fsdp=1);;
    *) echo "unknown stage $stage"; continue;;
  esac
  timeout "$T" "${cmd[@]}" > "$OUT/$stage.log" 2>&1
  echo "exit $? ($(date +%H:%M:%S))"
  grep -v "^\s*$" "$OUT/$stage.log" | grep -v "Warning\|warn(" | tail -n ${TAIL:-40}
done
