#!/usr/bin/env bash
# Builds .gpu/data, the training data a lent-GPU call carries (scripts/gpu_seg_burst.sh, gpu_burst.sh): a call
# carries at most 64 MiB and ../shared/data is 126 MB, so the MSRS frames travel as JPEG (quality 93; the
# validation figures that ship are recomputed here from the PNGs by scripts/eval_weights.sh), labels, boxes,
# RoadScene and the teacher as they are. Also fetches .whl/: what our code needs that the GPU machine's image
# lacks (kornia, rosbags and their compiled dependencies, for its Python 3.12). Both git-ignored, never committed.
# Then: run(command="scripts/gpu_seg_burst.sh ...", carry=[".whl", ".gpu/data"]).
set -eu
SRC=${1:-../shared/data}
DST=.gpu/data
PY=${PY:-.venv/bin/python}
rm -rf "$DST"; mkdir -p "$DST/msrs" "$DST/teachers"
cp -r "$SRC/msrs/label" "$SRC/msrs/boxes" "$DST/msrs/"
cp -r "$SRC/roadscene" "$DST/"
cp -r "$SRC/teachers/mfnet" "$DST/teachers/"
$PY - "$SRC/msrs" "$DST/msrs" <<'PYEOF'
import sys
from pathlib import Path

import cv2

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for sub in ("ir", "vi"):
    (dst / sub).mkdir()
    for p in sorted((src / sub).glob("*.png")):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(dst / sub / f"{p.stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 93])
PYEOF
if [ ! -d .whl ]; then
  for p in kornia==0.9.0 kornia_rs==0.2.0 rosbags==0.11.9 apsw==3.54.1.0 backports.zstd==1.8.0 lz4==4.4.5 \
           ruamel.yaml==0.19.1; do
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 "$p"
  done
fi
du -sh "$DST" .whl  # with the tracked tree (16 MB), under the 64 MiB a call carries
