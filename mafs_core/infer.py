"""`mafs infer` (folders of IR/VIS pairs -> fused, mask, colour mask, overlay PNGs) and `mafs export-onnx`."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mafs_core.tta import add_tta_args, tta_overrides

OUTPUT_DIRS = ("fused", "mask", "color", "overlay")


def add_engine_args(p: argparse.ArgumentParser, with_runtime: bool = True) -> None:
    """Arguments that choose and configure the network; shared by the commands that run the engine."""
    g = p.add_argument_group("weights")
    g.add_argument("--checkpoint", "-w", type=Path, default=None,
                   help="MAFS checkpoint (.safetensors; .onnx selects the onnxruntime backend). "
                        "Default: the shipped weights/mafs_t.safetensors")
    g.add_argument("--allow-pickle", action="store_true",
                   help="allow .pt/.pth pickle checkpoints (unpickling runs code: only for files you trust)")
    g.add_argument("--random-init", action="store_true", help="no weights: a seeded random network (smoke runs)")
    g.add_argument("--variant", default="mafs_t", help="network variant for --random-init (mafs_t, mafs_s, mafs_b)")
    g.add_argument("--num-classes", type=int, default=9, help="classes for --random-init")
    g.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    if not with_runtime:
        return
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    g.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"))
    g.add_argument("--onnx", type=Path, default=None, help="ONNX model for --backend onnxruntime")
    g.add_argument("--input-size", type=_input_size, default="auto", metavar="auto|0|WxH",
                   help="the network's working resolution: auto (about the checkpoint's training size at the image's "
                        "aspect ratio), WxH (exactly, e.g. 736x416) or 0 (the image's own size); outputs are always "
                        "at the RGB image's size")
    add_tta_args(g)
    g.add_argument("--no-cuda-graphs", action="store_true", help="disable CUDA graph capture")
    g.add_argument("--compile", action="store_true", help="torch.compile the network")
    g = p.add_argument_group("thermal and registration")
    g.add_argument("--thermal-norm", choices=("minmax", "percentile", "fixed"), default=None,
                   help="thermal normalisation (default: the checkpoint's)")
    g.add_argument("--low-pct", type=float, default=None, help="percentile mode: low percentile (e.g. 1)")
    g.add_argument("--high-pct", type=float, default=None, help="percentile mode: high percentile (e.g. 99)")
    g.add_argument("--smoothing", type=float, default=None, help="percentile mode: EMA weight of previous bounds")
    g.add_argument("--thermal-range", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="fixed mode: range in counts (or Kelvin with --gain/--offset)")
    g.add_argument("--gain", type=float, default=None, help="fixed mode: kelvin = counts * gain + offset")
    g.add_argument("--offset", type=float, default=None, help="fixed mode: kelvin = counts * gain + offset")
    g.add_argument("--homography", type=Path, default=None,
                   help="3x3 thermal->RGB pixel homography: .npy, or text/JSON with 9 numbers")
    g.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours")


def _input_size(text: str) -> Any:
    from mafs_core.sizes import parse_input_size

    size = parse_input_size(text)
    if size == "invalid":
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, 0 or WxH (e.g. 736x416)")
    return size


def load_homography(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path).astype(np.float64).reshape(3, 3)
    text = path.read_text()
    try:
        vals = np.asarray(json.loads(text), np.float64)
    except json.JSONDecodeError:
        vals = np.asarray(text.replace(",", " ").split(), np.float64)
    if vals.size != 9:
        raise ValueError(f"{path}: expected 9 numbers for a 3x3 homography, got {vals.size}")
    return vals.reshape(3, 3)


def engine_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "backend": args.backend, "input_size": args.input_size,
        "cuda_graphs": not args.no_cuda_graphs, "compile": args.compile, "overlay_alpha": args.alpha,
        **tta_overrides(args),
        "thermal_norm": args.thermal_norm, "thermal_low_pct": args.low_pct, "thermal_high_pct": args.high_pct,
        "thermal_smoothing": args.smoothing, "thermal_gain": args.gain, "thermal_offset": args.offset,
    }
    if args.thermal_range:
        kw["thermal_low"], kw["thermal_high"] = args.thermal_range
    if args.homography:
        kw["homography"] = load_homography(args.homography)
    if args.onnx:
        kw["onnx_path"] = str(args.onnx)
    return kw


def make_engine(args: argparse.Namespace):
    """FusionSegmenter from parsed add_engine_args() arguments."""
    from mafs_core.engine import FusionSegmenter

    kw = engine_config_from_args(args)
    import torch

    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        kw["warmup"] = 0  # nothing to capture on a CPU; the timing summary skips the first frame anyway
    if args.random_init and args.backend == "torch":
        return FusionSegmenter.from_variant(args.variant, num_classes=args.num_classes, seed=args.seed,
                                            device=args.device, precision=args.precision, **kw)
    engine = FusionSegmenter.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision,
                                             allow_pickle=args.allow_pickle, **kw)
    print(f"model: {engine.describe()}", file=sys.stderr)
    return engine


def cmd_infer(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mafs_core.checkpoint import CheckpointError
    from mafs_core.io import list_pairs, read_ir, read_vis

    try:
        pairs = list_pairs(args.ir, args.vis)
    except FileNotFoundError as exc:
        print(f"mafs infer: {exc}", file=sys.stderr)
        return 2
    if args.limit:
        pairs = pairs[: args.limit]
    if not pairs:
        print(f"mafs infer: no image pairs with matching names in {args.ir} and {args.vis}", file=sys.stderr)
        return 2
    try:
        seg = make_engine(args)
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        print(f"mafs infer: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for d in OUTPUT_DIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    timings: dict[str, list[float]] = {}
    failed: list[str] = []
    for pair in tqdm(pairs, desc="mafs infer", unit="pair", disable=args.quiet):
        try:
            res = seg.run(read_ir(pair.ir), read_vis(pair.vis))
        except (ValueError, TypeError) as exc:  # unreadable or malformed pair: report and go on
            failed.append(pair.name)
            tqdm.write(f"skipping {pair.name}: {exc}")
            continue
        cv2.imwrite(str(out / "fused" / f"{pair.name}.png"), res.fused_bgr)
        cv2.imwrite(str(out / "mask" / f"{pair.name}.png"), res.mask)
        cv2.imwrite(str(out / "color" / f"{pair.name}.png"), cv2.cvtColor(res.color, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "overlay" / f"{pair.name}.png"), res.overlay)
        for k, v in res.timings.items():
            timings.setdefault(k, []).append(v)
    summary = {
        "pairs": len(pairs) - len(failed), "failed": failed, "device": str(seg.device), "precision": seg.precision,
        "backend": seg.backend, "variant": seg.variant, "class_names": seg.class_names,
        # the first frame includes one-off work (allocations, graph capture): medians ignore it
        "median_ms": {k: statistics.median(v[1:] or v) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{summary['pairs']} pairs -> {out}  ({seg.variant}, {seg.device}, {seg.precision}, {seg.backend})")
    print("| stage | median ms |\n|---|---|")
    for k, v in summary["median_ms"].items():
        print(f"| {k} | {v:.1f} |")
    if failed:
        print(f"{len(failed)} pair(s) failed: {', '.join(failed[:10])}", file=sys.stderr)
    seg.release()
    return 1 if failed and len(failed) == len(pairs) else 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    import torch

    from mafs_core.checkpoint import CheckpointError, load_checkpoint
    from mafs_core.onnx_backend import export_onnx

    try:
        if args.random_init:
            from mafs_core.model import build_model

            torch.manual_seed(args.seed)
            model = build_model(args.variant, num_classes=args.num_classes)
            meta = {"variant": args.variant, "num_classes": args.num_classes,
                    "training": {"random_init": True, "seed": args.seed}}
        else:
            if args.checkpoint is None:
                from mafs_core.weights import default_checkpoint

                args.checkpoint = default_checkpoint()
            model, meta = load_checkpoint(args.checkpoint, allow_pickle=args.allow_pickle)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"mafs export-onnx: {exc}", file=sys.stderr)
        return 2
    path = export_onnx(model, args.out, height=args.height, width=args.width, dynamic=args.dynamic,
                       opset=args.opset, outputs=args.outputs, metadata=meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; inputs ir [B,1,H,W], vis [B,3,H,W] RGB in [0,1]; "
          f"{'dynamic B/H/W' if args.dynamic else f'fixed 1x{args.height}x{args.width}'})")
    if args.check:
        from mafs_core.onnx_backend import parity

        report = parity(model, path, args.height, args.width)
        print(f"onnxruntime parity: fused max abs diff {report['fused_max_abs']:.2e}, "
              f"mask agreement {100 * report['mask_agreement']:.3f} %")
    return 0


def register(subparsers: Any, registry: dict) -> None:
    p = subparsers.add_parser("infer", help="fuse and segment folders of IR/VIS image pairs",
                              description="Run MAFS on every IR/VIS pair with matching file names and write "
                                          "OUT/{fused,mask,color,overlay}/NAME.png and OUT/summary.json.")
    p.add_argument("--ir", type=Path, required=True, help="folder of thermal images (8- or 16-bit)")
    p.add_argument("--vis", type=Path, required=True, help="folder of visible images")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--limit", type=int, default=0, help="only the first N pairs")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_engine_args(p)
    p.set_defaults(func=cmd_infer)

    e = subparsers.add_parser("export-onnx", help="export the network to ONNX (for onnxruntime / TensorRT)",
                              description="Export the MAFS network (inputs ir [B,1,H,W], vis [B,3,H,W] RGB float "
                                          "in [0,1]; outputs fused [B,3,H,W] and logits or class_ids).")
    e.add_argument("--out", type=Path, required=True, help="output .onnx file")
    e.add_argument("--height", type=int, default=480)
    e.add_argument("--width", type=int, default=640)
    e.add_argument("--dynamic", action="store_true", help="dynamic batch/height/width (default: fixed shapes)")
    e.add_argument("--opset", type=int, default=18)
    e.add_argument("--outputs", choices=("logits", "ids"), default="logits",
                   help="second output: logits [B,C,H,W] or class_ids [B,H,W] (argmax inside the graph)")
    e.add_argument("--check", action="store_true", help="compare onnxruntime against PyTorch on a random input")
    add_engine_args(e, with_runtime=False)
    e.set_defaults(func=cmd_export_onnx)
