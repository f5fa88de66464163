"""Object instances from the semantic mask: connected components of the thing classes (person, car, bike...)
with their bounding box and mean class probability. What a robot's planner or tracker wants from a segmenter
when it has no detector: the node publishes them as `segmentation/objects`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

THING_CLASSES = ("car", "person", "bike")  # MSRS classes with instances; the others are stuff (curve, bump...)


@dataclass(frozen=True)
class MaskObject:
    class_id: int
    class_name: str
    x: int  # top-left corner and size of the bounding box, pixels of the mask
    y: int
    width: int
    height: int
    area: int  # pixels of the component
    score: float  # mean max-class probability over the component (1.0 without a confidence map)

    def to_dict(self) -> dict:
        return asdict(self)


def thing_class_ids(class_names: Sequence[str]) -> list[int]:
    return [i for i, n in enumerate(class_names) if n in THING_CLASSES]


def mask_objects(mask: np.ndarray, class_names: Sequence[str], classes: Sequence[int] | None = None,
                 confidence: np.ndarray | None = None, min_area: int = 64) -> list[MaskObject]:
    """Connected components (8-connected, OpenCV) of each class in `classes` (default: the thing classes), at
    least `min_area` pixels, with the mean of `confidence` (uint8, max probability x 255) over each; sorted by
    class, then by area, largest first."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    if confidence is not None and confidence.shape != mask.shape:
        raise ValueError(f"confidence {confidence.shape} and mask {mask.shape} differ in size")
    out: list[MaskObject] = []
    for c in (thing_class_ids(class_names) if classes is None else classes):
        n, lab, stats, _ = cv2.connectedComponentsWithStats((mask == c).astype(np.uint8), connectivity=8)
        if n <= 1:
            continue
        if confidence is not None:  # per-component mean in one pass
            sums = np.bincount(lab.ravel(), weights=confidence.ravel().astype(np.float64), minlength=n)
            scores = sums / np.maximum(stats[:, cv2.CC_STAT_AREA], 1) / 255.0
        else:
            scores = np.ones(n)
        found = [MaskObject(int(c), str(class_names[c]), int(s[0]), int(s[1]), int(s[2]), int(s[3]), int(s[4]),
                            round(float(scores[i]), 4))
                 for i, s in enumerate(stats) if i > 0 and s[cv2.CC_STAT_AREA] >= min_area]
        out += sorted(found, key=lambda o: -o.area)
    return out
