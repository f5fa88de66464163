"""Recalibrate a trained checkpoint: BatchNorm statistics ("precise BN") and/or per-class logit offsets.

    python scripts/recalibrate.py IN.safetensors OUT.safetensors CONFIG.yaml [key=value ...]
        [--average OTHER.safetensors ...] [--bn-images N [--bn-modules seg ...]] [--class-bias-images N]

`mafs train` does both itself before exporting (train.precise_bn_images, train.class_bias_images); this
script applies them to weights trained before those steps existed. Frames come from CONFIG's training
sources, un-augmented (same overrides as `mafs train`); unlabelled frames are labelled by CONFIG's teacher.

`--average` first takes the uniform mean of IN's and the others' weights (a "model soup", Wortsman et al.
2022: fine-tunes of one starting point average into a model that often generalises better than each). Each
one's folded class offsets are removed before the mean; BatchNorm statistics of a mean are not the mean's
statistics, so recalibrate all BN layers after it (`--bn-images`, no `--bn-modules`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from mafs_core.calibrate import apply_class_bias, calibrate_class_bias
from mafs_core.checkpoint import load_checkpoint, save_checkpoint
from mafs_core.train import calibration_frames, load_config, precise_bn


def without_class_bias(path: str) -> tuple[torch.nn.Module, dict]:
    """The checkpoint with its folded class offsets (training.class_bias) taken back out of the head."""
    model, meta = load_checkpoint(path)
    fit = meta.get("training", {}).get("class_bias")
    if fit:
        apply_class_bias(model, [-b for b in fit["bias"]])
    return model, meta


@torch.no_grad()
def average_into(model: torch.nn.Module, others: list[torch.nn.Module]) -> None:
    """Uniform mean of floating-point tensors; integer buffers (BN batch counters) keep `model`'s values."""
    state = model.state_dict()
    for name, value in state.items():
        if value.is_floating_point():
            value.copy_(torch.stack([value] + [o.state_dict()[name] for o in others]).mean(0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--average", nargs="+", default=[], metavar="OTHER",
                    help="checkpoints of the same variant to average with SRC first")
    ap.add_argument("--bn-images", type=int, default=0, help="frames for precise BN (0 = keep the statistics)")
    ap.add_argument("--bn-modules", nargs="*", default=[], help="only BN layers under these prefixes (default all)")
    ap.add_argument("--class-bias-images", type=int, default=0, help="frames for the class offsets (0 = off)")
    ap.add_argument("--half-params", action="store_true",
                    help="store parameters as float16 (half the file; for weights that ship in the repository)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    data = calibration_frames(cfg)
    model, meta = without_class_bias(args.src) if args.average else load_checkpoint(args.src)
    training = meta.setdefault("training", {})
    command = " ".join(sys.argv)
    if args.average:
        others = [without_class_bias(p) for p in args.average]
        if any(m["variant"] != meta["variant"] for _, m in others):
            ap.error(f"--average needs checkpoints of one variant ({meta['variant']})")
        average_into(model, [o for o, _ in others])
        training.pop("class_bias", None)  # removed from the weights above; refitted below when asked
        training["averaged"] = {"from": [args.src, *args.average], "command": command}
        print(f"averaged {1 + len(others)} checkpoints")
        if args.bn_images <= 0:
            print("warning: --average without --bn-images keeps the mean of the BatchNorm statistics, which do not "
                  "describe the averaged weights", file=sys.stderr)
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
    save_checkpoint(args.dst, model.eval(), meta, half_params=args.half_params)
    print(f"{args.src} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
