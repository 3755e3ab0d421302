#!/usr/bin/env bash
# Every early-exit method through the CLI on one backbone, one training subset, one seed:
#   train -> calibrate -> evaluate, then `elastic report` compares them (OUTDIR/reports/<time>_sst2/).
# Usage: ELASTIC_MODELS=... benchmarks/compare_methods.sh OUTDIR [method ...] [-- extra overrides]
# Default: mpnet-base (12 layers), SST-2, 6,000 training examples (SWEET's low-resource setting).
set -euo pipefail
OUT=${1:?usage: compare_methods.sh OUTDIR [method ...] [-- overrides]}; shift
METHODS=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do METHODS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#METHODS[@]} -gt 0 ] || METHODS=(early_exit sweet static pabee elasticbert elbert berxit deebert fastbert)
DATA=${ELASTIC_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/assets/data}/sst2
COMMON=(backbone=mpnet-base task=sst2 "task.data_dir=$DATA" task.max_train_samples=6000 task.max_seq_length=64
        train.lr=5e-5 train.epochs=2 train.batch_size=32 seed=42 "outputs=$OUT" "$@")
for m in "${METHODS[@]}"; do
  for stage in train calibrate evaluate; do
    start=$(date +%s)
    elastic "$stage" "method=$m" "${COMMON[@]}"
    echo "TIMING $m $stage $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
  done
done
elastic report task=sst2 report.backbone=mpnet-base "outputs=$OUT"
