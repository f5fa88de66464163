#!/usr/bin/env bash
# The "your cameras" figures (docs/benchmarks.md): a Boson-like 640x512 mono16 thermal camera, stamps 12 ms late,
# beside RGB cameras of three sizes, at 5 and 10 Hz, mafs_t on this machine's CPU; plus the 1080p camera with
# model.input_size 0 (the network at the camera's size, the behaviour before the working resolution).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/cameras}
DURATION=${DURATION:-30}
mkdir -p "$OUT"
run() {  # name, then bench_node arguments
  local name=$1; shift
  "$PY" benchmarks/bench_node.py --duration "$DURATION" --thermal-size 640x512 --thermal-encoding mono16 \
    --thermal-delay-ms 12 --checkpoint weights/mafs_t.safetensors --out "$OUT/$name.json" "$@" | \
    grep -E "pairs sent|latency p50|engine total" | sed "s/^/$name  /"
}
for hz in 5 10; do
  for size in 640x480 1280x720 1920x1080; do
    run "rgb${size}_${hz}hz" --rgb-size "$size" --rate "$hz"
  done
done
run "rgb1920x1080_5hz_input_size_0" --rgb-size 1920x1080 --rate 5 --input-size 0
