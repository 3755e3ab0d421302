#!/usr/bin/env bash
# E-LANG on SST-2 through the CLI: swift minilm-l3, super mpnet-base, both fine-tuned on the same
# 6,000-example subset as benchmarks/compare_methods.sh. The super model is the static mpnet-base
# checkpoint of that comparison when it exists (method.super_ckpt), else trained here.
# Usage: ELASTIC_MODELS=... benchmarks/elang_sst2.sh OUTDIR [extra overrides]
# Then:  python benchmarks/cascade_summary.py OUTDIR
set -euo pipefail
OUT=${1:?usage: elang_sst2.sh OUTDIR [overrides]}; shift
DATA=${ELASTIC_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/assets/data}/sst2
COMMON=(backbone=mpnet-base task=sst2 "task.data_dir=$DATA" task.max_train_samples=6000 task.max_seq_length=64
        train.lr=5e-5 train.epochs=2 train.batch_size=32 seed=42 "outputs=$OUT")
STATIC=$OUT/checkpoints/sst2/static/mpnet-base/seed42
SUPER=(); [ -f "$STATIC/model.safetensors" ] && SUPER=("method.super_ckpt=$STATIC")
# the 3-layer swift model gets a larger lr and one more epoch (cheap at its size)
ELANG=(method=elang method.swift=minilm-l3 "${SUPER[@]}" train.lr=1e-4 train.epochs=3 evaluate.latency_samples=300)
for stage in train calibrate evaluate; do
  start=$(date +%s)
  elastic "$stage" "${COMMON[@]}" "${ELANG[@]}" "$@"
  echo "TIMING elang $stage $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
done
