#!/usr/bin/env bash
# Every early-exit method (and SWEET's multi-model baseline) through the CLI on one backbone, one training
# subset, one seed: train -> calibrate -> evaluate, CAT's consistency target on a copy of early_exit's
# checkpoint, then `elastic report` compares them (OUTDIR/reports/<time>_sst2/).
# Usage: ELASTIC_MODELS=... benchmarks/compare_methods.sh OUTDIR [method ...] [-- extra overrides]
# Default: mpnet-base (12 layers), SST-2, 6,000 training examples, 2 epochs (SWEET's low-resource setting);
# a smaller budget goes after `--` (later overrides win): -- task.max_train_samples=2000 train.epochs=1
# A stage that ended well leaves OUTDIR/done.<method>.<stage> and is skipped: run the same command again to
# go on after an interruption (an interrupted training resumes from its last saved state).
# ELASTIC_STAGES="train" runs only those stages (e.g. train everything under load, then calibrate and evaluate
# on a quiet machine for clean latency; the report runs when evaluate is among them).
set -euo pipefail
OUT=${1:?usage: compare_methods.sh OUTDIR [method ...] [-- overrides]}; shift
METHODS=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do METHODS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#METHODS[@]} -gt 0 ] || METHODS=(static early_exit sweet multi_model pabee deebert elasticbert elbert berxit fastbert)
DATA=${ELASTIC_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/assets/data}/sst2
COMMON=(backbone=mpnet-base task=sst2 "task.data_dir=$DATA" task.max_train_samples=6000 task.max_seq_length=64
        train.lr=5e-5 train.epochs=2 train.batch_size=32 seed=42 "outputs=$OUT" "$@")
STAGES=${ELASTIC_STAGES:-train calibrate evaluate}
for s in $STAGES; do
  case $s in train|calibrate|evaluate) ;; *) echo "error: ELASTIC_STAGES has '$s': choose among train calibrate evaluate" >&2; exit 2;; esac
done
wanted() { [[ " $STAGES " == *" $1 "* ]]; }
mkdir -p "$OUT"
stage() {  # NAME STAGE OVERRIDES...: one stage, skipped when done, timed
  local name=$1 stage=$2; shift 2
  [ -f "$OUT/done.$name.$stage" ] && return 0
  wanted "$stage" || return 0
  local start; start=$(date +%s)
  elastic "$stage" "${COMMON[@]}" "$@"
  touch "$OUT/done.$name.$stage"
  echo "TIMING $name $stage $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
}
for m in "${METHODS[@]}"; do
  extra=()
  # DeeBERT's stage 1 is plain fine-tuning: the static checkpoint of this comparison, when there is one
  static=$OUT/checkpoints/sst2/static/mpnet-base/seed42
  [ "$m" = deebert ] && [ -f "$static/model.safetensors" ] && extra=("train.init_from=$static")
  stage "$m" train "method=$m" "${extra[@]}"
  stage "$m" calibrate "method=$m"
  stage "$m" evaluate "method=$m"
  if [ "$m" = early_exit ]; then
    # CAT's guarantee (README, Calibration targets) on a copy, so early_exit's own calibration stays
    copy=$OUT/early_exit_consistency
    if [ ! -d "$copy" ] && [ -f "$OUT/done.early_exit.train" ]; then
      cp -r "$OUT/checkpoints/sst2/early_exit/mpnet-base/seed42" "$copy"
    fi
    cons=(method=early_exit "ckpt=$copy" tracking.experiment=sst2-consistency)
    stage consistency calibrate "${cons[@]}" calibrate.target=consistency calibrate.epsilon=0.05 calibrate.delta=0.1
    stage consistency evaluate "${cons[@]}"
  fi
done
wanted evaluate || exit 0
elastic report task=sst2 report.backbone=mpnet-base "outputs=$OUT"
