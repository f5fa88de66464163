"""Recalibrate a trained checkpoint: BatchNorm statistics ("precise BN") and/or per-class logit offsets.

    python scripts/recalibrate.py IN.safetensors OUT.safetensors CONFIG.yaml [key=value ...]
        [--bn-images N [--bn-modules seg ...]] [--class-bias-images N]

`mafs train` does both itself before exporting (train.precise_bn_images, train.class_bias_images); this
script applies them to weights trained before those steps existed. Frames come from CONFIG's training
sources, un-augmented (same overrides as `mafs train`); unlabelled frames are labelled by CONFIG's teacher.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from mafs_core.calibrate import calibrate_class_bias
from mafs_core.checkpoint import load_checkpoint, save_checkpoint
from mafs_core.train import calibration_frames, load_config, precise_bn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--bn-images", type=int, default=0, help="frames for precise BN (0 = keep the statistics)")
    ap.add_argument("--bn-modules", nargs="*", default=[], help="only BN layers under these prefixes (default all)")
    ap.add_argument("--class-bias-images", type=int, default=0, help="frames for the class offsets (0 = off)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    data = calibration_frames(cfg)
    model, meta = load_checkpoint(args.src)
    training = meta.setdefault("training", {})
    command = " ".join(sys.argv)
    if args.bn_images > 0:
        used = precise_bn(model, data, args.bn_images, torch.device("cpu"), modules=args.bn_modules)
        training["precise_bn"] = {"images": used, "modules": args.bn_modules or "all", "from": args.src,
                                  "command": command}
        print(f"recalibrated BatchNorm on {used} images")
    if args.class_bias_images > 0:
        teacher = None
        if cfg.teacher.path:
            from mafs_core.teacher import load_mfnet_teacher

            teacher = load_mfnet_teacher(cfg.teacher.path, allow_pickle=cfg.teacher.allow_pickle)
        fit = calibrate_class_bias(model, data, args.class_bias_images, torch.device("cpu"), teacher)
        training["class_bias"] = {**dataclasses.asdict(fit), "from": args.src, "command": command}
        print(f"class offsets {fit.bias} on {fit.images} frames: mIoU {fit.miou_before:.3f} -> {fit.miou_after:.3f}")
    save_checkpoint(args.dst, model.eval(), meta)
    print(f"{args.src} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
