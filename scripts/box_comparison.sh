#!/usr/bin/env bash
# Issue 15's comparison: the same start, the same budget, four supervisions of the MSRS training pairs, scored on
# the committed validation split against the real masks and with `mafs eval --boxes`. The start is the mafs_t that
# never saw a real mask (distilled from the teacher only; the weights shipped before f2f2ee4), so that (a) and (b)
# learn nothing from masks at all:
#   a  teacher only: MFNet pseudo-labels + KD, masks and boxes unused
#   b  teacher + boxes: the real boxes (msrs/boxes) with the box terms, masks unused; the teacher's
#      pseudo-labels corrected by the boxes (loss.box_teacher: correct; docs/training.md)
#   b_drop  as b, but the box classes dropped from the teacher's pseudo-labels on box frames (the ablation)
#   c  masks: the real masks (the upper reference)
#   scripts/box_comparison.sh [STEPS]          (CPU: ~1.8 s/step on one thread; ~25 min for 800 steps each)
# A rerun continues each run from its last state.pt (train --resume).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-800}
PY=${PY:-.venv/bin/python}
DATA=${MAFS_DATA_ROOT:-../shared/data}
OUT=${OUT:-runs/boxes}
INIT=${INIT:-$OUT/start_distilled.safetensors}
mkdir -p "$OUT"
[ -f "$INIT" ] || git show f2f2ee4^:weights/mafs_t.safetensors > "$INIT"
MAP='"0:person,1:bike,2:car"'
VAL=data/splits/msrs_val.txt
declare -A SOURCES=(
  [a]="[{root: msrs, holdout: $VAL, labels: false}, {root: roadscene}]"
  [b]="[{root: msrs, holdout: $VAL, labels: false, boxes: msrs/boxes, box_classes: $MAP}, {root: roadscene}]"
  [c]="[{root: msrs, holdout: $VAL}, {root: roadscene}]"
)
SOURCES[b_drop]=${SOURCES[b]}
BOX="loss.w_box_proj=1.0 loss.w_box_pair=1.0 loss.w_box_neg=0.5"
declare -A LOSS=([a]="" [b]="$BOX" [b_drop]="$BOX loss.box_teacher=drop" [c]="")
for run in a b b_drop c; do
  [ -f "$OUT/$run/final.safetensors" ] && continue  # done: a rerun only adds what is missing
  # shellcheck disable=SC2086
  "$PY" -m mafs_core.cli train --resume configs/mafs_t_stage2.yaml "data.root=$DATA" "data.sources=${SOURCES[$run]}" \
    "train.init_from=$INIT" optim.lr=1e-3 optim.warmup_steps=50 loss.kd_weight=1.0 \
    "train.steps=$STEPS" train.val_every=0 train.select=loss train.out_dir="$OUT/$run" ${LOSS[$run]}
done
VALDIR=$(mktemp -d)
trap 'rm -rf "$VALDIR"' EXIT
mkdir -p "$VALDIR"/{ir,vi,label,boxes}
for n in $(grep -v '^#' $VAL); do
  for d in ir vi label; do ln -s "$(realpath "$DATA/msrs/$d/$n.png")" "$VALDIR/$d/"; done
  ln -s "$(realpath "$DATA/msrs/boxes/$n.txt")" "$VALDIR/boxes/"
done
for run in start a b c b_drop; do
  ckpt="$OUT/$run/final.safetensors" teacher=()
  [ "$run" = start ] && ckpt=$INIT teacher=(--baseline-teacher)
  [ -f "$OUT/eval_$run/report.json" ] || [ ! -f "$ckpt" ] && continue
  "$PY" -m mafs_core.cli eval --ir "$VALDIR/ir" --vis "$VALDIR/vi" --labels "$VALDIR/label" \
    --boxes "$VALDIR/boxes" --box-classes "0:person,1:bike,2:car" --checkpoint "$ckpt" \
    --device cpu --warmup 0 --out "$OUT/eval_$run" "${teacher[@]}"
done
"$PY" scripts/box_comparison_table.py "$OUT" | tee "$OUT/table.md"
