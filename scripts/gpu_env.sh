# Sourced by the lent-GPU scripts (gpu_burst.sh, gpu_seg_burst.sh): output folders, the carried wheels
# (.whl/, installed into $WORK/site), the carried data (.gpu/data) and a record of the machine in $LOGS/gpu.txt.
# Set WORK before sourcing; OUT, DEVICE, PY and OMP_NUM_THREADS may be set by the caller.
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK/logs"
LOGS=$WORK/logs
if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=$WORK/site:$PWD
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MAFS_DATA_ROOT=$PWD/.gpu/data
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$LOGS/gpu.txt"
$PY -c "import torch, kornia; print('torch', torch.__version__, 'kornia', kornia.__version__)" | tee -a "$LOGS/gpu.txt"
