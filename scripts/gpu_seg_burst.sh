#!/usr/bin/env bash
# One prepared call on a lent GPU (H100/H200), about 9 minutes: the real-label segmentation recipe
# (configs/*_stage2.yaml, docs/training.md) at GPU size.
#   mafs_s  Stage II (T1 + T2 s) from the shipped mafs_t grown into mafs_s by `mafs widen` (same function, 5x the
#           parameters): the GPU default weights (weights/mafs_s.safetensors). From scratch, a burst this short
#           segmented worse than mafs_t (docs/training.md); widening starts it where mafs_t is.
#   mafs_t  Stage II continued from the shipped weights (T2 s), sharing the GPU
# The shipped mafs_t carries an ImageNet-pretrained EfficientNet-Lite0 (run (b1), docs/training.md), so both runs
# name it (model.overrides.vis_backbone) and start at lr 2e-4, the rate at which (s2) and (b1) kept their start.
# Both on the committed validation split's complement only; each ends with precise BN of `seg` and class-bias
# calibration on the training frames' real labels, then validates through the engine on the whole split.
# Results under $OUT: the exported .safetensors and results.tgz (logs, losses).
# Needs, carried beside the tree (git-ignored, built by scripts/gpu_data.sh): .whl/ (kornia, rosbags and their
# wheels for the machine's Python) and .gpu/data/{msrs,roadscene,teachers} (training data; never committed).
#   T2 = seconds of mafs_t Stage II, T1 + T2 of mafs_s (default 120 / 360); EXTRA="key=value ..." appended to
#   every run (a CPU dry run: DEVICE=cpu T1=10 T2=20 EXTRA="data.batch_size=2 data.augment.crop=[96,128]").
set -u
WORK=${WORK:-/tmp/gpu_seg}
T1=${T1:-120}
T2=${T2:-360}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
. "$(dirname "$0")/gpu_env.sh"

COMMON=(data.root=.gpu/data teacher.path=.gpu/data/teachers/mfnet/mfnet_final.pth train.precision=bf16
        data.batch_size=16 data.num_workers=6 data.repeat=8 train.progress=false train.image_every=100000
        train.ckpt_every=100000 train.threads=0 train.anneal_by_time=true)
[ "$DEVICE" = cuda ] || COMMON+=("train.device=$DEVICE")
read -r -a EXTRA_ARR <<< "${EXTRA:-}"
run() {  # NAME CONFIG SECONDS STEPS [key=value ...]: the schedule ends at STEPS or SECONDS, whichever comes first
  local name=$1 config=$2 secs=$3 steps=$4 after=240; shift 4
  [ "$DEVICE" = cuda ] || after=1200  # precise BN, calibration and the split's validation take minutes on a CPU
  timeout $((secs + after)) $PY -m mafs_core.train "$config" "${COMMON[@]}" "train.out_dir=$WORK/$name" \
    "train.time_limit=$secs" "train.steps=$steps" "$@" "${EXTRA_ARR[@]}" > "$LOGS/$name.log" 2>&1
  echo "$name exit $?"; cp "$WORK/$name/losses.jsonl" "$LOGS/$name.losses.jsonl" 2>/dev/null
}
$PY -m mafs_core.cli widen weights/mafs_t.safetensors "$WORK/mafs_s_init.safetensors" > "$LOGS/widen.log" 2>&1
echo "widen exit $?"
run mafs_s_stage2 configs/mafs_s_stage2.yaml "$((T1 + T2))" 2500 "train.init_from=$WORK/mafs_s_init.safetensors" \
  'model.overrides.dec_attn=[true,true,false]' model.overrides.vis_backbone=efficientnet_lite0 optim.lr=2e-4 \
  'data.augment.crop=[384,512]' train.val_every=250 \
  "train.export=$OUT/mafs_s.safetensors" &
run mafs_t_stage2 configs/mafs_t_stage2.yaml "$T2" 1500 train.init_from=weights/mafs_t.safetensors optim.lr=2e-4 \
  model.overrides.vis_backbone=efficientnet_lite0 'data.augment.crop=[384,512]' train.val_every=250 "train.export=$OUT/mafs_t.safetensors" &
wait
for f in "$LOGS"/*.log; do echo "-- $f"; grep -E "time limit|step [0-9]+ val|calibration|Error|error" "$f" \
  | sed -E 's/ val\/(f_|EN|SD|SF|AG|MI|SCD|SSIM|teacher_iou)[^ ]*//g' | cut -c1-400 | tail -4; done
tar -czf "$OUT/results.tgz" -C "$WORK" logs
ls -la "$OUT"
