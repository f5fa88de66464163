#!/usr/bin/env bash
# Score a checkpoint the way the shipped weights are reported (weights/eval/, weights/VARIANT.json):
#   val        the committed validation split (data/splits/msrs_val.txt), real 9-class labels, with the MFNet
#              teacher and pixel-max / mean fusion on the same frames
#   train      every 4th MSRS training pair (outside the split), real labels, with the teacher: how well the
#              model fits what it was trained on, beside how it generalises (val)
#   person     msrs_person_masks (evaluation only), person IoU, with the teacher
#   msrs       all 247 MSRS pairs, fusion metrics against the peers of shared/reference/peer_fusion_dev.md
#   roadscene  the 50 RoadScene pairs, likewise
#   scripts/eval_weights.sh weights/mafs_t.safetensors OUT_DIR [cpu|cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: scripts/eval_weights.sh CHECKPOINT OUT_DIR [DEVICE]}
OUT=${2:?usage: scripts/eval_weights.sh CHECKPOINT OUT_DIR [DEVICE]}
DEV=${3:-cpu}
DATA=${MAFS_DATA_ROOT:-../shared/data}
PY=${PY:-.venv/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"
link() {  # FOLDER NAME...: the MSRS pairs NAME with their labels, as symlinks under $TMP/FOLDER/{ir,vi,label}
  local dir=$TMP/$1 n d
  shift
  mkdir -p "$dir"/{ir,vi,label}
  for n in "$@"; do
    for d in ir vi label; do ln -s "$(realpath "$DATA/msrs/$d/$n.png")" "$dir/$d/"; done
  done
}
SPLIT=data/splits/msrs_val.txt
mapfile -t VAL_NAMES < <(grep -v '^#' "$SPLIT")
mapfile -t TRAIN_NAMES < <(ls "$DATA/msrs/label" | sed 's/\.png$//' | grep -vxF -f "$SPLIT" | awk 'NR % 4 == 1')
link val "${VAL_NAMES[@]}"
link train "${TRAIN_NAMES[@]}"
TEACHER=$DATA/teachers/mfnet/mfnet_final.pth
mafs() { "$PY" -m mafs_core.cli "$@" --checkpoint "$W" --device "$DEV" --warmup 0; }
mafs eval --ir "$TMP/val/ir" --vis "$TMP/val/vi" --labels "$TMP/val/label" --baselines --baseline-teacher "$TEACHER" \
  --out "$OUT/val"
mafs eval --ir "$TMP/train/ir" --vis "$TMP/train/vi" --labels "$TMP/train/label" --baseline-teacher "$TEACHER" \
  --out "$OUT/train"
P=$DATA/msrs_person_masks
mafs eval --ir "$P/ir" --vis "$P/vi" --labels "$P/label" --label-mode binary:person --baseline-teacher "$TEACHER" \
  --out "$OUT/person"
mafs eval --ir "$DATA/msrs/ir" --vis "$DATA/msrs/vi" --baselines --out "$OUT/msrs"
mafs eval --ir "$DATA/roadscene/ir" --vis "$DATA/roadscene/vi" --baselines --out "$OUT/roadscene"
