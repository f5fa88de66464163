#!/usr/bin/env bash
# One prepared call on a lent GPU (H100/H200): engine benchmarks, GPU tests and a training burst for the
# default weights, all results under $OUT. Needs, carried beside the tree (both git-ignored):
#   .whl/      kornia, kornia_rs and rosbags wheels for the GPU machine's Python
#   .gpu/data  msrs (JPEG copies), roadscene, teachers/mfnet — training data (never committed)
# Budget: about 4 minutes of GPU time in all; each step has its own timeout and writes as it goes.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
T_TRAIN=${T_TRAIN:-150}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, kornia; print('torch', torch.__version__, 'kornia', kornia.__version__)" | tee -a "$OUT/gpu.txt"

echo "== engine benchmark (fp16, CUDA graphs, 480x640, batch 1)"
timeout 60 python3 benchmarks/bench_engine.py --device cuda --precision fp16 --variants mafs_t mafs_s mafs_b \
  --iters 100 --out "$OUT/bench_engine_cuda.json" 2>&1 | tail -12

echo "== training burst: Stage I then Stage II of mafs_t (bf16), GPU tests alongside"
(timeout 60 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1) &
RUN_DIR=/tmp/run WEIGHTS_DIR=/tmp/weights DATA_ROOT=/nonexistent PY=python3 \
  STAGE1="train.steps=${S1_STEPS:-200} optim.warmup_steps=20" \
  STAGE2="train.steps=${S2_STEPS:-450} optim.warmup_steps=30 balance.warmup_updates=30" \
  timeout "$T_TRAIN" scripts/train_default.sh mafs_t data.root=.gpu/data \
  teacher.path=.gpu/data/teachers/mfnet/mfnet_final.pth train.precision=bf16 data.augment.resize=null \
  'data.augment.crop=[320,384]' data.batch_size=12 data.num_workers=10 data.val_max=12 \
  train.val_every=100 train.ckpt_every=100 train.image_every=100000 > "$OUT/train.log" 2>&1
echo "train exit $?"; grep -E "step [0-9]+ val" "$OUT/train.log" | cut -c1-220 | tail -8
wait
tail -4 "$OUT/gpu_tests.txt"
if [ -f /tmp/weights/mafs_t.safetensors ]; then cp /tmp/weights/mafs_t.safetensors /tmp/weights/mafs_t.json "$OUT/"
elif [ -f /tmp/run/stage2/best.safetensors ]; then cp /tmp/run/stage2/best.safetensors "$OUT/mafs_t_stage2_best.safetensors"; fi
cp /tmp/run/stage2/losses.jsonl "$OUT/stage2_losses.jsonl" 2>/dev/null
ls -la "$OUT"
