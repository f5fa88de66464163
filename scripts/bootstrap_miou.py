"""How far apart are two models on the validation split, given that it has only 50 frames?

    python scripts/bootstrap_miou.py LABEL_DIR REFERENCE_MASKS OTHER_MASKS [...] [--classes 9] [--n 2000]

Masks are `mafs infer --out DIR` results (DIR/mask/NAME.png, class ids) on the split's frames. Frames are
resampled with replacement (the bootstrap) and the pooled mIoU recomputed on each resample: for each model its
95 % interval, and for each other model the paired difference to the reference on the same resampled frames.
The paired interval is the one that decides whether a candidate is better; a single model's interval says how
much a different 50-frame split could move its figure. Frames of one driving sequence are not independent, so
both intervals are, if anything, too narrow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mafs_core.io import read_label
from mafs_core.metrics import ConfusionMatrix


def confusions(labels: Path, masks: Path, names: list[str], k: int) -> np.ndarray:
    """[frames, k, k] confusion counts per frame, counted as `mafs eval` counts them."""
    out = []
    for n in names:
        cm = ConfusionMatrix(k)
        cm.update(read_label(masks / "mask" / f"{n}.png"), read_label(labels / f"{n}.png"))
        out.append(cm.mat)
    return np.stack(out)


def pooled_miou(c: np.ndarray) -> float:
    """mIoU of the frames' summed confusion, with `mafs eval`'s rule for classes absent from both sides."""
    cm = ConfusionMatrix(c.shape[-1])
    cm.mat = c.sum(0)
    return cm.miou()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("labels", type=Path)
    ap.add_argument("masks", type=Path, nargs="+", help="reference first, then the others")
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--n", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    names = sorted(p.stem for p in a.labels.glob("*.png"))
    conf = [confusions(a.labels, m, names, a.classes) for m in a.masks]
    idx = np.random.default_rng(a.seed).integers(0, len(names), size=(a.n, len(names)))
    boot = np.array([[pooled_miou(c[i]) for i in idx] for c in conf])  # [models, n]
    print(f"{len(names)} frames, {a.n} resamples")
    print("| masks | mIoU | 95 % interval | paired difference to the first | 95 % interval | P(better) |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, c, b in zip(a.masks, conf, boot, strict=True):
        lo, hi = np.percentile(b, [2.5, 97.5])
        d = b - boot[0]
        dlo, dhi = np.percentile(d, [2.5, 97.5])
        paired = "" if m == a.masks[0] else f"{d.mean():+.3f} | {dlo:+.3f} … {dhi:+.3f} | {np.mean(d > 0):.3f}"
        print(f"| {m} | {pooled_miou(c):.3f} | {lo:.3f} … {hi:.3f} | {paired or '— | — | —'} |")


if __name__ == "__main__":
    main()
