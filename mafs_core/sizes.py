"""Working-resolution arithmetic and its user-facing setting. Pure Python (no torch): the ROS parameter layer
validates `model.input_size` with it before any model is loaded."""

from __future__ import annotations

import math
from typing import Any


def working_size(frame: tuple[int, int], target: tuple[int, int] = (480, 640), multiple: int = 32,
                 tolerance: float = 1.25) -> tuple[int, int]:
    """The network's (H, W) for a camera frame: about `target`'s pixel count at the frame's aspect ratio.

    Sides are rounded to `multiple` (the network's stride, so nothing is padded). A frame up to `tolerance`
    times the target's area runs at its own size: resampling a 640x512 frame to 608x480 would cost detail and
    save almost nothing. The cost of the network then follows the model, not the camera.
    """
    h, w = int(frame[0]), int(frame[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"frame size must be positive, got {frame}")
    area = float(target[0]) * float(target[1])
    if h * w <= tolerance * area:
        return h, w
    s = math.sqrt(area / (h * w))
    return (max(multiple, round(h * s / multiple) * multiple), max(multiple, round(w * s / multiple) * multiple))


def parse_input_size(value: str) -> Any:
    """The working-resolution setting as users write it (node parameter, CLI): 'auto' -> 'auto', '0' -> None
    (the camera's own size), 'WxH' as cameras are named (640x480) -> (H, W); anything else -> 'invalid'."""
    v = str(value).strip().lower()
    if v == "auto":
        return "auto"
    if v in ("0", "full"):
        return None
    w, sep, h = v.partition("x")
    if sep and w.isdigit() and h.isdigit() and 16 <= int(w) <= 8192 and 16 <= int(h) <= 8192:
        return int(h), int(w)
    return "invalid"
