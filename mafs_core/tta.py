"""Test-time augmentation of the segmentation: class probabilities averaged over mirrored and rescaled inputs.

Why: on the validation split the shipped mafs_t gains more from averaging a few views of each frame (docs/training.md,
"Test-time augmentation") than from any CPU training run since (b1). It multiplies the network's work by the number
of views, so it is off by default; on a GPU, or for offline evaluation of a bag, the time is often there.
The fused image always comes from the plain pass: only the mask and its confidence change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_tta(scales: Sequence[float], flip: bool) -> tuple[tuple[float, ...], bool]:
    """Normalised (scales, flip); ValueError for a set the engine cannot use. Scale 1.0 (the plain pass, whose
    fused image is published) must be one of them."""
    out = tuple(float(s) for s in scales)
    if not out or any(not 0.25 <= s <= 4.0 for s in out):
        raise ValueError(f"tta_scales must be 1 to n factors in [0.25, 4] of the working resolution, got {scales!r}")
    if 1.0 not in out:
        raise ValueError(f"tta_scales must include 1.0 (the plain pass), got {scales!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"tta_scales lists a factor twice: {scales!r}")
    return out, bool(flip)


def tta_active(scales: Sequence[float], flip: bool) -> bool:
    return bool(flip) or tuple(scales) != (1.0,)


def average_views(logits_of: Logits, ir: torch.Tensor, vis: torch.Tensor, plain: torch.Tensor,
                  scales: Sequence[float], flip: bool, multiple: int = 32) -> torch.Tensor:
    """Log of the mean class probability over the views, at `plain`'s size and dtype (so argmax and confidence
    downstream read it as logits). `plain` = logits_of(ir, vis), already computed; other scales are rounded to
    `multiple` (the network's padding unit) and their logits resized bilinearly to `plain`'s size."""
    size = plain.shape[-2:]
    total = plain.float().softmax(1)
    views = 1
    h, w = ir.shape[-2:]
    for s in scales:
        if s == 1.0:
            a, b = ir, vis
        else:
            hw = (max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple))
            a = F.interpolate(ir, hw, mode="bilinear", align_corners=False, antialias=s < 1)
            b = F.interpolate(vis.float(), hw, mode="bilinear", align_corners=False, antialias=s < 1).to(vis.dtype)
        for mirrored in ((False, True) if flip else (False,)):
            if s == 1.0 and not mirrored:
                continue  # the plain pass, given
            x, y = (a.flip(-1), b.flip(-1)) if mirrored else (a, b)
            out = logits_of(x, y).float()
            out = out.flip(-1) if mirrored else out
            if out.shape[-2:] != size:
                out = F.interpolate(out, size, mode="bilinear", align_corners=False)
            total = total + out.softmax(1)
            views += 1
    return (total / views).clamp_min(1e-8).log().to(plain.dtype)


def add_tta_args(p) -> None:  # argparse parser or argument group
    """--tta-scales / --tta-flip, the same for `mafs infer`, `mafs eval` and `mafs bag eval`."""
    p.add_argument("--tta-scales", type=float, nargs="+", default=[1.0], metavar="S",
                   help="test-time augmentation: average the class probabilities over these factors of the working "
                        "resolution (1.0 included; e.g. 0.75 1.0 1.25). Each factor is another network pass")
    p.add_argument("--tta-flip", action="store_true",
                   help="test-time augmentation: also average each scale's mirrored pass (twice the passes)")


def tta_overrides(args) -> dict:
    """EngineConfig fields from add_tta_args()'s arguments."""
    return {"tta_scales": tuple(args.tta_scales), "tta_flip": bool(args.tta_flip)}
