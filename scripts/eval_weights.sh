#!/usr/bin/env bash
# Score a checkpoint the way the shipped weights are reported (weights/eval/, weights/VARIANT.json):
#   val        the committed validation split (data/splits/msrs_val.txt), real 9-class labels, with the MFNet
#              teacher and pixel-max / mean fusion on the same frames
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
VAL=$(mktemp -d)
trap 'rm -rf "$VAL"' EXIT
mkdir -p "$VAL"/{ir,vi,label} "$OUT"
for n in $(grep -v '^#' data/splits/msrs_val.txt); do
  for d in ir vi label; do ln -s "$(realpath "$DATA/msrs/$d/$n.png")" "$VAL/$d/"; done
done
mafs() { "$PY" -m mafs_core.cli "$@" --checkpoint "$W" --device "$DEV" --warmup 0; }
mafs eval --ir "$VAL/ir" --vis "$VAL/vi" --labels "$VAL/label" --baselines --baseline-teacher "$DATA/teachers/mfnet/mfnet_final.pth" --out "$OUT/val"
P=$DATA/msrs_person_masks
mafs eval --ir "$P/ir" --vis "$P/vi" --labels "$P/label" --label-mode binary:person \
  --baseline-teacher "$DATA/teachers/mfnet/mfnet_final.pth" --out "$OUT/person"
mafs eval --ir "$DATA/msrs/ir" --vis "$DATA/msrs/vi" --baselines --out "$OUT/msrs"
mafs eval --ir "$DATA/roadscene/ir" --vis "$DATA/roadscene/vi" --baselines --out "$OUT/roadscene"
