"""Reading image pairs from folders: the one place that knows file layouts of paired IR/VIS folders."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Pair:
    name: str  # file stem, shared by both modalities
    ir: Path
    vis: Path
    label: Path | None = None


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS}


def list_pairs(ir_dir: str | Path, vis_dir: str | Path, label_dir: str | Path | None = None,
               strict: bool = False) -> list[Pair]:
    """Pairs with the same file stem in both folders, sorted by name.

    strict=True raises on any name present in only one folder (training wants that);
    otherwise unmatched names are skipped (inference over partial exports).
    """
    irs, viss = _by_stem(Path(ir_dir)), _by_stem(Path(vis_dir))
    labels = _by_stem(Path(label_dir)) if label_dir is not None else {}
    only_ir, only_vis = sorted(set(irs) - set(viss)), sorted(set(viss) - set(irs))
    if strict and (only_ir or only_vis):
        raise ValueError(f"unmatched names: only in {ir_dir}: {only_ir[:5]}, only in {vis_dir}: {only_vis[:5]}")
    names = sorted(set(irs) & set(viss))
    if label_dir is not None and strict:
        missing = [n for n in names if n not in labels]
        if missing:
            raise ValueError(f"no label in {label_dir} for: {missing[:5]}")
    return [Pair(n, irs[n], viss[n], labels.get(n)) for n in names]


def read_image(path: str | Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None or img.size == 0:
        raise ValueError(f"unreadable image: {path}")
    return img


def read_ir(path: str | Path) -> np.ndarray:
    """Thermal image as HxW, keeping 16-bit counts; colour files are converted to grey."""
    img = read_image(path)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    return img


def read_vis(path: str | Path) -> np.ndarray:
    """Visible image as HxWx3 BGR uint8 (grey files are expanded)."""
    img = read_image(path, cv2.IMREAD_COLOR)
    return img


def read_label(path: str | Path) -> np.ndarray:
    img = read_image(path)
    if img.ndim == 3:
        img = img[..., 0]
    return img


def jsonable(x: Any) -> Any:
    """JSON has no nan/inf and no numpy types: map them to null / Python scalars."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


# sensor_msgs/Image encoding -> (dtype, channels). OpenCV-style "8UC3" names are accepted like their ROS aliases.
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1), "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1), "16UC1": (np.dtype(np.uint16), 1),
    "bgr8": (np.dtype(np.uint8), 3), "rgb8": (np.dtype(np.uint8), 3), "8UC3": (np.dtype(np.uint8), 3),
    "bgra8": (np.dtype(np.uint8), 4), "rgba8": (np.dtype(np.uint8), 4), "8UC4": (np.dtype(np.uint8), 4),
    "32FC1": (np.dtype(np.float32), 1), "64FC1": (np.dtype(np.float64), 1),
}


class ImageFormatError(ValueError):
    """An image message that cannot be decoded as its declared encoding (bad input, not a bug)."""


def image_to_array(msg: Any, where: str = "") -> np.ndarray:
    """A sensor_msgs/Image (rosbags or rclpy object: duck-typed, so the core stays ROS-free) as an HxW or
    HxWxC array in its own encoding. Honours `step` padding and `is_bigendian`; a view where it can be."""
    enc = msg.encoding
    if enc not in IMAGE_ENCODINGS:
        raise ImageFormatError(f"unsupported image encoding {enc!r}{where} "
                               f"(supported: {', '.join(IMAGE_ENCODINGS)})")
    dtype, ch = IMAGE_ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = msg.data if isinstance(msg.data, np.ndarray) else np.frombuffer(msg.data, np.uint8)
    if h * w == 0 or step < w * ch * dtype.itemsize or buf.size < h * step:
        raise ImageFormatError(f"malformed {enc} image{where}: {w}x{h} step {step} with {buf.size} data bytes")
    rows = buf[: h * step].reshape(h, step)[:, : w * ch * dtype.itemsize]
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    arr = np.ascontiguousarray(rows).view(wire)  # no copy unless rows are padded
    arr = arr.reshape(h, w, ch) if ch > 1 else arr.reshape(h, w)
    return arr if wire.isnative else arr.astype(dtype)
