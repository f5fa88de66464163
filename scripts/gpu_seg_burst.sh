#!/usr/bin/env bash
# One prepared call on a lent GPU (H100/H200), about 9 minutes: the real-label segmentation recipe
# (configs/*_stage2.yaml, docs/training.md) at GPU size.
#   mafs_s  Stage II (T1 + T2 s) from the shipped mafs_t grown into mafs_s by `mafs widen` (same function, its
#           Lite0 carried over), or from .gpu/data/init/mafs_s.safetensors when scripts/gpu_data.sh put run (l2r)'s
#           weights there (mafs_s with Lite2, 0.469 on the split; only if the call carries room for them).
#           Then its fused images are scored on RoadScene, the reference set where every CPU-trained mafs_s lost
#           sharpness against SeAFusion (docs/training.md, runs (l2r), (f2), (f3)).
#   mafs_t  Stage II continued from the shipped weights (T2 s), sharing the GPU
# Both start at lr 2e-4, the rate at which (s2), (b1) and (l2) kept their start.
# Both on the committed validation split's complement only; each ends with precise BN of `seg` and class-bias
# calibration on the training frames' real labels, then validates through the engine on the whole split.
# Results under $OUT: the exported .safetensors, roadscene_mafs_s.txt and results.tgz (logs, losses).
# Needs, carried beside the tree (git-ignored, built by scripts/gpu_data.sh): kornia's two wheels from .whl/ (name
# the files in carry: the bag wheels do not fit the 64 MiB beside the data) and .gpu/data (never committed).
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
S_INIT=.gpu/data/init/mafs_s.safetensors
if [ -f "$S_INIT" ]; then
  S_ARGS=(model.overrides.vis_backbone=efficientnet_lite2)
else
  S_INIT=$WORK/mafs_s_init.safetensors S_ARGS=(model.overrides.vis_backbone=efficientnet_lite0)
  $PY -m mafs_core.cli widen weights/mafs_t.safetensors "$S_INIT" > "$LOGS/widen.log" 2>&1
  echo "widen exit $?"
fi
run mafs_s_stage2 configs/mafs_s_stage2.yaml "$((T1 + T2))" 2500 "train.init_from=$S_INIT" "${S_ARGS[@]}" \
  'model.overrides.dec_attn=[true,true,false]' optim.lr=2e-4 'data.augment.crop=[384,512]' train.val_every=250 \
  "train.export=$OUT/mafs_s.safetensors" &
run mafs_t_stage2 configs/mafs_t_stage2.yaml "$T2" 1500 train.init_from=weights/mafs_t.safetensors optim.lr=2e-4 \
  model.overrides.vis_backbone=efficientnet_lite0 'data.augment.crop=[384,512]' train.val_every=250 "train.export=$OUT/mafs_t.safetensors" &
wait
[ -f "$OUT/mafs_s.safetensors" ] && $PY -m mafs_core.cli eval --ir .gpu/data/roadscene/ir --vis .gpu/data/roadscene/vi \
  --checkpoint "$OUT/mafs_s.safetensors" --device "$DEVICE" --warmup 0 --baselines --out "$WORK/roadscene_mafs_s" \
  2>&1 | grep -E "model|max|mean" | tail -3 | tee "$OUT/roadscene_mafs_s.txt"
for f in "$LOGS"/*.log; do echo "-- $f"; grep -E "time limit|step [0-9]+ val|calibration|Error|error" "$f" \
  | sed -E 's/ val\/(f_|EN|SD|SF|AG|MI|SCD|SSIM|teacher_iou)[^ ]*//g' | cut -c1-400 | tail -4; done
tar -czf "$OUT/results.tgz" -C "$WORK" logs
ls -la "$OUT"
