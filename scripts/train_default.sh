#!/usr/bin/env bash
# Train the default weights: Stage I (masked autoencoder) then Stage II (joint), export weights/VARIANT.*
#
#   scripts/train_default.sh mafs_t [override ...]      # overrides go to both stages, e.g. data.root=/data
#   STAGE1="train.steps=20000" STAGE2="train.steps=40000" scripts/train_default.sh mafs_t train.precision=bf16
#   LAUNCH="torchrun --nproc_per_node 4" scripts/train_default.sh mafs_s data.root=/data
#
# Re-running resumes each stage from its run dir (runs/VARIANT/stage{1,2}/state.pt); a finished stage is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${1:?usage: scripts/train_default.sh VARIANT [key=value ...]}
shift
PY=${PY:-.venv/bin/python}
LAUNCH=${LAUNCH:-$PY}
RUN=${RUN_DIR:-runs/$VARIANT}
OUT=${WEIGHTS_DIR:-weights}
DATA_ROOT=${DATA_ROOT:-../shared/data}
mkdir -p "$RUN" "$OUT"
read -r -a S1 <<< "${STAGE1:-}"
read -r -a S2 <<< "${STAGE2:-}"

if [ ! -f "$RUN/stage1/final.safetensors" ]; then
  $LAUNCH -m mafs_core.train "configs/${VARIANT}_stage1.yaml" "train.out_dir=$RUN/stage1" "$@" "${S1[@]}" --resume
fi
$LAUNCH -m mafs_core.train "configs/${VARIANT}_stage2.yaml" "train.out_dir=$RUN/stage2" \
  "train.init_from=$RUN/stage1/final.safetensors" "train.export=$OUT/$VARIANT.safetensors" "$@" "${S2[@]}" --resume

# Evaluation on the real person masks (eval only; never trained on) -> report in $RUN/eval
EVAL="$DATA_ROOT/msrs_person_masks"
if [ -d "$EVAL" ]; then
  "$PY" -m mafs_core.cli eval --ir "$EVAL/ir" --vis "$EVAL/vi" --labels "$EVAL/label" --label-mode binary:person \
    --checkpoint "$OUT/$VARIANT.safetensors" --out "$RUN/eval" --device cpu || echo "evaluation failed (skipped)"
fi

"$PY" - "$OUT/$VARIANT.safetensors" "$OUT/$VARIANT.json" "$RUN" "$0 $VARIANT $*" <<'PYEOF'
"""weights/VARIANT.json: how the shipped weights were made (command, both configs, validation, evaluation)."""
import json
import sys
from pathlib import Path

from safetensors import safe_open

weights, out, run, command = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
with safe_open(str(weights), "pt") as f:
    meta = json.loads(f.metadata()["mafs"])
stage1 = {}
s1 = run / "stage1" / "final.safetensors"
if s1.is_file():
    with safe_open(str(s1), "pt") as f:
        stage1 = json.loads(f.metadata()["mafs"]).get("training", {})
report = run / "eval" / "report.json"
summary = {
    "variant": meta["variant"], "file": weights.name, "size_mb": round(weights.stat().st_size / 2**20, 2),
    "sha256": meta["sha256"], "command": command,
    "stage1": {"command": stage1.get("command"), "steps": stage1.get("steps"), "config": stage1.get("config"),
               "val": stage1.get("val")},
    "stage2": {k: meta["training"].get(k) for k in ("command", "steps", "config", "val", "teacher", "ema")},
    "eval_person_masks": json.loads(report.read_text()) if report.is_file() else None,
}
out.write_text(json.dumps(summary, indent=1))
print(f"wrote {weights} ({summary['size_mb']} MB) and {out}")
PYEOF
