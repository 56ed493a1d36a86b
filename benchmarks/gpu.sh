#!/usr/bin/env bash
# GPU throughput check for configs/resnet50.yaml: resnet50, 224 px, bf16, channels_last, EMA and
# the default callbacks, on a generated JPEG folder, for a fixed number of steps. Prints
# images/s, the fraction of time waiting for data, peak GPU memory and host-device syncs per
# step (validation and epoch ends included).
#   bash benchmarks/gpu.sh [STEPS] [BATCH] [WORKERS]
#   variants: recipe, no-channels-last (default), compile (BENCH_VARIANTS="recipe compile")
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
BATCH=${2:-256}
WORKERS=${3:-$(( $(nproc) - 2 ))}
DATA=${BENCH_DATA:-/tmp/classifier-bench-jpeg}
PY=${PYTHON:-python3}
# python -m does not search the current folder for modules: the probe comes from PYTHONPATH.
export CLASSIFIER_ALLOWED_CLASS_PATHS=benchmarks CLASSIFIER_CACHE_DIR=/tmp/classifier-cache
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY -m benchmarks.make_data "$DATA" "${BENCH_IMAGES:-20000}" 256
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# BENCH_VARIANTS="recipe compile" adds torch.compile (its warm-up steps are not timed).
for variant in ${BENCH_VARIANTS:-recipe no-channels-last}; do
  extra=()
  [ "$variant" = "no-channels-last" ] && extra=(--model.channels_last false)
  [ "$variant" = "compile" ] && extra=(--model.compile true)
  BENCH_OUT=/tmp/bench-$variant.json $PY -m classifier fit --config configs/resnet50.yaml \
    --model.pretrained false --data.data_dir "$DATA" --data.batch_size "$BATCH" \
    --data.num_workers "$WORKERS" --trainer.max_steps "$STEPS" --trainer.max_epochs 100 \
    --trainer.limit_val_batches 4 --trainer.num_sanity_val_steps 0 --test_after_fit false \
    --trainer.callbacks+=benchmarks.probe.Throughput "${extra[@]}" > /tmp/bench-$variant.log 2>&1 \
    || { tail -40 /tmp/bench-$variant.log; exit 1; }
  echo "$variant: $(cat /tmp/bench-$variant.json | tr -d '\n ')"
done
