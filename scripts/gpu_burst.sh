#!/usr/bin/env bash
# One prepared call on a lent GPU (H100/H200), about 7 minutes (386 s on an H200): `bag eval` throughput with
# mafs_s (alone on the GPU), then the GPU tests and a training burst of three full-resolution Stage II fine-tunes
# of the shipped mafs_t sharing the GPU:
#   mafs_t_a  whole 480x640 frames, scale 0.8-1.5, w_grad 4, w_qabf 3, CutMix 0.5, seg weight 1
#   mafs_t_b  the same with scale 0.5-2.0 and seg weight 2: persons at more sizes (the shipped weights' run)
#   mafs_t_c  the same as a with stronger distillation (kd_weight 3) and pseudo-labels from confidence 0.3
# Each ends with precise BN of the segmentation decoder and class-bias calibration (as the shipped weights).
# Results under $OUT: the three exported .safetensors and results.tgz (logs, losses, benchmark JSON, tests).
# Needs, carried beside the tree (git-ignored): .whl/ (kornia, rosbags and their wheels for the machine's
# Python) and .gpu/data/{msrs,roadscene,teachers} (training data; never committed).
#   T_TRAIN=seconds of training per run (default 320); EXTRA="key=value ..." appended to every run
#   (a CPU dry run: DEVICE=cpu T_TRAIN=20 EXTRA="data.batch_size=2 data.augment.crop=[96,128] ...").
set -u
WORK=${WORK:-/tmp/gpu_burst}
T=${T_TRAIN:-320}
. "$(dirname "$0")/gpu_env.sh"

if [ "$DEVICE" = cuda ] && [ -z "${SKIP_BENCH:-}" ]; then
  echo "== bag eval throughput: mafs_s, fp16, batch 16, 240 frames of 640x480, one scoring thread per core"
  timeout 180 $PY benchmarks/bench_bag_eval.py --variant mafs_s --device cuda --batch-size 16 --frames 240 \
    > "$LOGS/bench_bag_eval.txt" 2>&1
  tail -6 "$LOGS/bench_bag_eval.txt"; cp benchmarks/results/bench_bag_eval_cuda*.json "$LOGS/" 2>/dev/null
fi

COMMON=(data.root=.gpu/data teacher.path=.gpu/data/teachers/mfnet/mfnet_final.pth
        train.precision=bf16 data.augment.resize=null 'data.augment.crop=[480,640]' 'data.augment.scale=[0.8,1.5]'
        data.augment.cutmix=0.5 data.batch_size=16 data.num_workers=4 data.repeat=16 data.val_max=12
        data.val_metric_images=2 train.image_every=100000 train.progress=false train.val_every=100000
        train.ckpt_every=100000 'train.precise_bn_modules=[seg]' train.class_bias_images=64)
[ "$DEVICE" = cuda ] || COMMON+=("train.device=$DEVICE")
read -r -a EXTRA_ARR <<< "${EXTRA:-}"
train() {  # NAME CONFIG TIME [key=value ...]
  local name=$1 config=$2 secs=$3; shift 3
  timeout $((secs + 120)) $PY -m mafs_core.train "$config" "${COMMON[@]}" "train.out_dir=$WORK/$name" \
    "train.time_limit=$secs" "$@" "${EXTRA_ARR[@]}" > "$LOGS/$name.log" 2>&1
  echo "$name exit $?"; cp "$WORK/$name/losses.jsonl" "$LOGS/$name.losses.jsonl" 2>/dev/null
}
FT=(train.init_from=weights/mafs_t.safetensors train.steps=3000 optim.lr=3e-4 optim.warmup_steps=100
    balance.warmup_updates=100 train.ema=0.995 loss.w_grad=4.0 loss.w_qabf=3.0 loss.seg_weight=1.0)
echo "== training burst: ${T} s per run"
train mafs_t_a configs/mafs_t_stage2.yaml "$T" "${FT[@]}" "train.export=$OUT/mafs_t_a.safetensors" &
train mafs_t_b configs/mafs_t_stage2.yaml "$T" "${FT[@]}" 'data.augment.scale=[0.5,2.0]' loss.seg_weight=2.0 \
  "train.export=$OUT/mafs_t_b.safetensors" &
train mafs_t_c configs/mafs_t_stage2.yaml "$T" "${FT[@]}" loss.kd_weight=3.0 loss.pseudo_conf=0.3 \
  "train.export=$OUT/mafs_t_c.safetensors" &
if [ "$DEVICE" = cuda ]; then
  (sleep 20; timeout 120 $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$LOGS/gpu_tests.txt" 2>&1) &
fi
wait
for f in "$LOGS"/*.log; do echo "-- $f"; grep -E "time limit|step [0-9]+ val|precise BN|Error|error" "$f" | cut -c1-300 | tail -4; done
tail -3 "$LOGS/gpu_tests.txt" 2>/dev/null
tar -czf "$OUT/results.tgz" -C "$WORK" logs
ls -la "$OUT"
