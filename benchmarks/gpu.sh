#!/usr/bin/env bash
# GPU throughput check: the ceiling and what the recipe reaches, side by side in one run, for
# configs/resnet50.yaml (resnet50, 224 px, bf16, channels-last, EMA and the default callbacks):
#   1. the synthetic step on a batch already on the GPU, eager and compiled (benchmarks/gpu_step.py);
#   2. the input pipeline alone, CPU path (torchvision in WORKERS loader processes) and GPU path
#      (data.decode: dali, nvJPEG) (benchmarks/input_pipeline.py);
#   3. the recipe with each path, eager and compiled, for STEPS steps (benchmarks/probe.py:
#      images/s, time waiting for data, peak GPU memory, host-device syncs per step);
# on generated folders of 256 px JPEGs and of 500x375 photo-sized JPEGs (ImageNet's average);
#   4. the first run on 10,000 photos never seen over a warm run (benchmarks/scan.py; the scan and
#      the first epoch's hashes; BENCH_FIRST_RUN_SKIP=1 leaves it out).
#   bash benchmarks/gpu.sh [STEPS] [BATCH] [WORKERS]
# BENCH_FOLDERS="256 photo" and BENCH_VARIANTS="cpu dali cpu-compile dali-compile" narrow it;
# BENCH_ARGS is added to every fit and BENCH_STEP_ARGS to the synthetic step (a CPU dry run:
# see the README). The dali rows need the dali extra (pip install 'classifier[dali]').
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
BATCH=${2:-256}
WORKERS=${3:-$(( $(nproc) - 2 ))}
IMAGES=${BENCH_IMAGES:-20000}
PY=${PYTHON:-python3}
OUT=${BENCH_RESULTS:-/tmp/classifier-gpu-bench}
# python -m does not search the current folder for modules: the probe comes from PYTHONPATH.
export CLASSIFIER_ALLOWED_CLASS_PATHS=benchmarks CLASSIFIER_CACHE_DIR=/tmp/classifier-cache
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
read -r -a fit_extra <<< "${BENCH_ARGS:-}"
read -r -a step_extra <<< "${BENCH_STEP_ARGS:-}"
mkdir -p "$OUT" && rm -f "$OUT"/*.json
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

for compiled in eager compile; do
  flag=(); [ "$compiled" = compile ] && flag=(--compile)
  $PY -m benchmarks.gpu_step --batch "$BATCH" "${flag[@]}" "${step_extra[@]}" > "$OUT/step-$compiled.json"
  echo "synthetic step, $compiled: $(cat "$OUT/step-$compiled.json")"
done

for folder in ${BENCH_FOLDERS:-256 photo}; do
  data=/tmp/classifier-bench-$folder
  $PY -m benchmarks.make_data "$data" "$IMAGES" "$folder"
  for decode in cpu dali; do
    $PY -m benchmarks.input_pipeline "$data" --decode "$decode" --batch "$BATCH" \
      --workers "$WORKERS" --steps 50 > "$OUT/input-$folder-$decode.json" 2> "$OUT/input-$folder-$decode.log" \
      || { tail -5 "$OUT/input-$folder-$decode.log"; echo '{"failed": true}' > "$OUT/input-$folder-$decode.json"; }
    echo "input pipeline, $folder, $decode: $(cat "$OUT/input-$folder-$decode.json")"
  done
  for variant in ${BENCH_VARIANTS:-cpu dali cpu-compile dali-compile}; do
    extra=(--data.decode "${variant%-compile}")
    [ "$variant" != "${variant%-compile}" ] && extra+=(--model.compile true)
    log="$OUT/recipe-$folder-$variant.log"
    BENCH_OUT="$OUT/recipe-$folder-$variant.json" $PY -m classifier fit --config configs/resnet50.yaml \
      --model.pretrained false --data.data_dir "$data" --data.batch_size "$BATCH" \
      --data.num_workers "$WORKERS" --trainer.max_steps "$STEPS" --trainer.max_epochs 100 \
      --trainer.limit_val_batches 4 --trainer.num_sanity_val_steps 0 --test_after_fit false \
      --trainer.callbacks+=benchmarks.probe.Throughput "${extra[@]}" "${fit_extra[@]}" > "$log" 2>&1 \
      || { tail -20 "$log"; echo '{"failed": true}' > "$OUT/recipe-$folder-$variant.json"; }
    echo "recipe, $folder, $variant: $(tr -d '\n ' < "$OUT/recipe-$folder-$variant.json")"
  done
done
# The first run on 10,000 photos never seen, over a warm run (scan and first-epoch hashes).
if [ -z "${BENCH_FIRST_RUN_SKIP:-}" ]; then
  $PY -m benchmarks.scan /tmp/classifier-bench-first gpu > "$OUT/first-run.json" 2> "$OUT/first-run.log" \
    && echo "first run: $(tr -d '\n ' < "$OUT/first-run.json")" || tail -20 "$OUT/first-run.log"
fi
$PY -m benchmarks.gpu_summary "$OUT"
