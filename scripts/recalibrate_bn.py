"""Re-estimate a checkpoint's BatchNorm statistics on un-augmented training frames ("precise BN").

    python scripts/recalibrate_bn.py IN.safetensors OUT.safetensors CONFIG.yaml [key=value ...] [--images N]

`mafs train` does this itself before exporting (train.precise_bn_images); this script applies it to weights
trained before that step existed. The data come from CONFIG's sources (same overrides as `mafs train`).
"""

from __future__ import annotations

import argparse
import sys

import torch

from mafs_core.checkpoint import load_checkpoint, save_checkpoint
from mafs_core.datasets import AugmentConfig, PairDataset
from mafs_core.train import _records, load_config, precise_bn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--images", type=int, default=128)
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    d = cfg.data
    data = PairDataset(_records(d.root, d.sources, "train"), num_classes=d.num_classes, train=False,
                       augment=AugmentConfig(resize=d.val_resize or d.augment.resize),
                       thermal_norm_8bit=d.thermal_norm_8bit, thermal_norm_16bit=d.thermal_norm_16bit)
    model, meta = load_checkpoint(args.src)
    used = precise_bn(model, data, args.images, torch.device("cpu"))
    meta.setdefault("training", {})["precise_bn"] = {"images": used, "from": args.src,
                                                     "command": " ".join(sys.argv)}
    save_checkpoint(args.dst, model.eval(), meta)
    print(f"recalibrated BatchNorm on {used} images: {args.src} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
