#!/usr/bin/env bash
# Issue 15's comparison: the same start (the shipped mafs_t), the same budget, three supervisions of the MSRS
# training pairs, scored on the committed validation split against the real masks and with `mafs eval --boxes`:
#   a  teacher only: MFNet pseudo-labels + KD, masks and boxes unused
#   b  teacher + boxes: the real boxes (msrs/boxes) with the box terms, masks unused; the box classes
#      (person, bike, car) are left to the boxes on those frames
#   c  masks: the real masks (the upper reference)
#   scripts/box_comparison.sh [STEPS]          (CPU: ~1.8 s/step on one thread; ~25 min for 800 steps each)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-800}
PY=${PY:-.venv/bin/python}
DATA=${MAFS_DATA_ROOT:-../shared/data}
OUT=${OUT:-runs/boxes}
MAP='"0:person,1:bike,2:car"'
VAL=data/splits/msrs_val.txt
declare -A SOURCES=(
  [a]="[{root: msrs, holdout: $VAL, labels: false}, {root: roadscene}]"
  [b]="[{root: msrs, holdout: $VAL, labels: false, boxes: msrs/boxes, box_classes: $MAP}, {root: roadscene}]"
  [c]="[{root: msrs, holdout: $VAL}, {root: roadscene}]"
)
declare -A LOSS=([a]="" [b]="loss.w_box_proj=1.0 loss.w_box_pair=1.0 loss.w_box_neg=0.5" [c]="")
for run in a b c; do
  # shellcheck disable=SC2086
  "$PY" -m mafs_core.cli train configs/mafs_t_stage2.yaml "data.root=$DATA" "data.sources=${SOURCES[$run]}" \
    train.init_from=weights/mafs_t.safetensors optim.lr=1e-3 optim.warmup_steps=50 loss.kd_weight=1.0 \
    "train.steps=$STEPS" train.val_every=0 train.select=loss train.out_dir="$OUT/$run" ${LOSS[$run]}
done
VALDIR=$(mktemp -d)
trap 'rm -rf "$VALDIR"' EXIT
mkdir -p "$VALDIR"/{ir,vi,label,boxes}
for n in $(grep -v '^#' $VAL); do
  for d in ir vi label; do ln -s "$(realpath "$DATA/msrs/$d/$n.png")" "$VALDIR/$d/"; done
  ln -s "$(realpath "$DATA/msrs/boxes/$n.txt")" "$VALDIR/boxes/"
done
for run in a b c; do
  "$PY" -m mafs_core.cli eval --ir "$VALDIR/ir" --vis "$VALDIR/vi" --labels "$VALDIR/label" \
    --boxes "$VALDIR/boxes" --box-classes "0:person,1:bike,2:car" --checkpoint "$OUT/$run/final.safetensors" \
    --device cpu --warmup 0 --out "$OUT/eval_$run"
done
