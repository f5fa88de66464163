"""Engine latency: network only and end to end (uint8 NumPy in -> NumPy out), median and p99 per variant.

    .venv/bin/python benchmarks/bench_engine.py --device cpu --variants mafs_t mafs_s --iters 20
    .venv/bin/python benchmarks/bench_engine.py --device cuda --precision fp16 --iters 300
    .venv/bin/python benchmarks/bench_engine.py --device cpu --checkpoints weights/mafs_*.safetensors

With --checkpoints it times those files instead of random-init variants: a shipped file's layout can differ from
its variant's (mafs_s grown from mafs_t keeps mafs_t's decoder block at 1/8 and carries a pretrained encoder).

On CUDA it also reports the device-side time from the first upload to the end of the device->host copy
(CUDA events) and the peak GPU memory. Writes benchmarks/results/bench_engine_<device>.json.
Random-init weights: latency does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mafs_core.engine import PRECISIONS, FusionSegmenter  # noqa: E402
from mafs_core.tta import add_tta_args, tta_overrides  # noqa: E402

# (device, variant, precision) -> end-to-end median target in ms (from the issue)
TARGETS = {("cpu", "mafs_t", "fp32"): 200.0, ("cpu", "mafs_s", "fp32"): 600.0, ("cuda", "mafs_s", "fp16"): 4.0}


def _frames(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A real MSRS pair resized to (h, w) when the data is there, else structured noise."""
    import cv2

    from mafs_core.io import list_pairs, read_ir, read_vis

    data = REPO.parent / "shared" / "data" / "msrs"
    try:
        pair = list_pairs(data / "ir", data / "vi")[0]
        return cv2.resize(read_ir(pair.ir), (w, h)), cv2.resize(read_vis(pair.vis), (w, h))
    except (FileNotFoundError, IndexError, ValueError):
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (h, w), dtype=np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _stats(ms: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(ms), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": statistics.fmean(ms)}


def bench_variant(variant: str, args: argparse.Namespace, checkpoint: Path | None = None) -> dict:
    """One row: the random-init `variant`, or the file `checkpoint` (its variant read from it)."""
    cuda = args.device.startswith("cuda")
    clock = time.process_time if (args.clock == "process" and not cuda) else time.perf_counter
    engine = dict(device=args.device, precision=args.precision, cuda_graphs=args.cuda_graphs, compile=args.compile,
                  warmup=args.warmup, warmup_size=(args.height, args.width), **tta_overrides(args))
    if checkpoint is None:
        seg = FusionSegmenter.from_variant(variant, model_overrides={"vis_backbone": args.vis_backbone}, **engine)
    else:
        seg = FusionSegmenter.from_checkpoint(checkpoint, **engine)
        variant = seg.model.config.variant
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dtype = PRECISIONS[seg.precision]
    # (a) network only, on prepared device tensors (+ argmax, which the engine fuses into the graph)
    ir = torch.rand(1, 1, args.height, args.width, device=seg.device, dtype=dtype)
    vis = torch.rand(1, 3, args.height, args.width, device=seg.device, dtype=dtype)
    if cuda and seg.config.channels_last:
        vis = vis.contiguous(memory_format=torch.channels_last)
    net_ms: list[float] = []
    with torch.inference_mode():
        for _ in range(2):
            seg._forward(ir, vis)
        for _ in range(args.iters):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                seg._forward(ir, vis)
                end.record()
                end.synchronize()
                net_ms.append(start.elapsed_time(end))
            else:
                t = clock()
                seg._forward(ir, vis)
                net_ms.append((clock() - t) * 1e3)
    # (b) end to end: uint8 NumPy frames in, NumPy fused/mask/colour/overlay out
    th, bgr = _frames(args.height, args.width)
    for _ in range(2):
        seg.run(th, bgr)
    e2e_ms, dev_ms, stages = [], [], {"preprocess": [], "inference": [], "postprocess": []}
    for _ in range(args.iters):
        t = clock()
        res = seg.run(th, bgr, want_color=not args.mask_only, want_overlay=not args.mask_only)
        e2e_ms.append((clock() - t) * 1e3)
        for k in stages:
            stages[k].append(res.timings[k])
        if "device" in res.timings:
            dev_ms.append(res.timings["device"])
    row = {
        "variant": variant, "checkpoint": None if checkpoint is None else str(checkpoint),
        "vis_backbone": seg.model.config.vis_backbone if checkpoint else args.vis_backbone,
        "device": str(seg.device), "precision": seg.precision,
        "height": args.height,
        "width": args.width, "iters": args.iters, "cuda_graphs": bool(cuda and args.cuda_graphs),
        "compile": args.compile, "tta": seg.describe().partition("test-time augmentation: ")[2],
        "clock": "wall" if cuda else args.clock, "threads": torch.get_num_threads(),
        "params_m": sum(p.numel() for p in seg.model.parameters()) / 1e6,
        "network": _stats(net_ms), "end_to_end": _stats(e2e_ms),
        "stages_median_ms": {k: statistics.median(v) for k, v in stages.items()},
    }
    if dev_ms:
        row["device_upload_to_host"] = _stats(dev_ms)
    if cuda:
        row["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    target = TARGETS.get(("cuda" if cuda else "cpu", variant, seg.precision))
    if target is not None:
        row["target_ms"] = target
        row["meets_target"] = row["end_to_end"]["median_ms"] <= target
    seg.release()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["mafs_t", "mafs_s", "mafs_b"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: 20 on CPU, 300 on CUDA)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--mask-only", action="store_true", help="skip colour mask and overlay (as a node with no "
                                                             "subscribers to them)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--vis-backbone", default="",
                   help="add a pretrained backbone: efficientnet_lite0 or efficientnet_lite2")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="CPU only: 'process' times CPU seconds of this process (with --threads 1 it estimates the "
                        "single-core latency of an idle machine when other jobs share the cores)")
    add_tta_args(p)
    p.add_argument("--checkpoints", nargs="+", type=Path, default=[],
                   help="time these weight files (as the node loads them) instead of --variants")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.iters is None:
        args.iters = 300 if args.device.startswith("cuda") else 20
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2
    rows = []
    for v, ckpt in [(None, c) for c in args.checkpoints] or [(v, None) for v in args.variants]:
        rows.append(bench_variant(v, args, ckpt))
        r = rows[-1]
        print(f"{ckpt or v}: network {r['network']['median_ms']:.2f} ms, "
              f"end-to-end {r['end_to_end']['median_ms']:.2f} ms", file=sys.stderr)
    dev = "cuda" if args.device.startswith("cuda") else "cpu"
    hw = torch.cuda.get_device_name() if dev == "cuda" else f"{platform.processor() or platform.machine()}, " \
                                                               f"{torch.get_num_threads()} threads"
    out = args.out or REPO / "benchmarks" / "results" / f"bench_engine_{dev}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]  # CPU timings are only meaningful on an otherwise idle machine
    out.write_text(json.dumps({"hardware": hw, "torch": torch.__version__, "cpu_count": os.cpu_count(),
                               "loadavg_1m_after": load, "rows": rows}, indent=2))
    if dev == "cpu" and load > (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: other processes inflated these "
              "CPU timings", file=sys.stderr)
    clk = "" if dev == "cuda" else f", {args.clock} clock"
    print(f"\nbench_engine on {hw} (torch {torch.__version__}), {args.height}x{args.width}, {args.iters} iters{clk}\n")
    print("| variant | precision | graphs | network median / p99 ms | end-to-end median / p99 ms | device ms "
          "| peak MB | target |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        dv = r.get("device_upload_to_host", {}).get("median_ms")
        tgt = f"<= {r['target_ms']:g} ms: {'yes' if r['meets_target'] else 'NO'}" if "target_ms" in r else ""
        dev_s = "" if dv is None else f"{dv:.2f}"
        peak = f"{r['peak_gpu_mem_mb']:.0f}" if "peak_gpu_mem_mb" in r else ""
        net, e2e = r["network"], r["end_to_end"]
        name = r["variant"] + (f" ({Path(r['checkpoint']).name})" if r["checkpoint"] else "")
        print(f"| {name} | {r['precision']} | {r['cuda_graphs']} "
              f"| {net['median_ms']:.2f} / {net['p99_ms']:.2f} | {e2e['median_ms']:.2f} / {e2e['p99_ms']:.2f} "
              f"| {dev_s} | {peak} | {tgt} |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
