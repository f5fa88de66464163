"""Class names and palettes. MSRS and MFNet share one 9-class list."""

from __future__ import annotations

import numpy as np

MSRS_CLASSES: tuple[str, ...] = (
    "unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump",
)
# RGB, index = class id (MSRS / MFNet convention).
MSRS_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192),
    (128, 128, 0), (64, 64, 128), (192, 128, 128), (192, 64, 0),
)


def default_palette(num_classes: int) -> np.ndarray:
    """An (N, 3) uint8 RGB palette: MSRS colours first, then a deterministic spread for extra classes."""
    pal = np.zeros((num_classes, 3), np.uint8)
    for i in range(num_classes):
        if i < len(MSRS_PALETTE):
            pal[i] = MSRS_PALETTE[i]
        else:  # the PASCAL VOC bit-interleaving scheme: distinct and stable
            c, r, g, b = i, 0, 0, 0
            for j in range(8):
                r |= ((c >> 0) & 1) << (7 - j)
                g |= ((c >> 1) & 1) << (7 - j)
                b |= ((c >> 2) & 1) << (7 - j)
                c >>= 3
            pal[i] = (r, g, b)
    return pal


def default_class_names(num_classes: int) -> list[str]:
    names = list(MSRS_CLASSES[:num_classes])
    return names + [f"class_{i}" for i in range(len(names), num_classes)]
