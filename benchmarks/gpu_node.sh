#!/usr/bin/env bash
# The node end to end on a lent GPU: 640x480 pairs at 30 Hz for 30 s through real DDS, mafs_s, fp16 (about
# 2 minutes). The machine's Python has torch but no ROS: the ROS 2 Kilted wheels for its Python (carried in
# .rosw/, git-ignored; see docs/benchmarks.md for how to download them) go into a --system-site-packages
# venv so that their bootstrapper .pth runs. kornia and rosbags come from .whl/ (or an earlier gpu_burst.sh).
set -u
OUT=${OUT:-/tmp/gpu_out}
WORK=${WORK:-/tmp/gpu_burst}
VENV=${VENV:-/tmp/rosvenv}
mkdir -p "$OUT"
[ -d "$WORK/site/kornia" ] || python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl
[ -x "$VENV/bin/python" ] || { python3 -m venv --system-site-packages "$VENV" &&
  "$VENV/bin/pip" install -q --no-index --no-deps --no-compile .rosw/*.whl; }
# The host's packages (torch, numpy, yaml) may live outside its system site-packages: list its sys.path in a .pth
python3 -c "import os, sys; print('\n'.join(p for p in sys.path if p and os.path.isdir(p)))" \
  > "$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/_host_paths.pth"
export PYTHONPATH=$WORK/site:$PWD PYTHONUNBUFFERED=1 MAFS_DATA_ROOT=$PWD/.gpu/data
"$VENV/bin/python" -c "import rclpy, sensor_msgs.msg, torch, kornia; print('rclpy ok; torch', torch.__version__)"
for variant in ${VARIANTS:-mafs_s}; do
  echo "== node, $variant, cuda, 30 Hz"
  timeout 150 "$VENV/bin/python" benchmarks/bench_node.py --device cuda --variant "$variant" --duration "${DURATION:-30}" \
    --out "$OUT/bench_node_cuda_$variant.json" 2>&1 | tail -25
  echo "== node, $variant, cuda, 30 Hz, 1920x1080 RGB + 640x512 mono16 thermal (docs/cameras.md)"
  timeout 150 "$VENV/bin/python" benchmarks/bench_node.py --device cuda --variant "$variant" --duration "${DURATION:-30}" \
    --rgb-size 1920x1080 --thermal-size 640x512 --thermal-encoding mono16 --thermal-delay-ms 12 \
    --out "$OUT/bench_node_cuda_${variant}_1920x1080.json" 2>&1 | tail -25
done
ls -la "$OUT"
