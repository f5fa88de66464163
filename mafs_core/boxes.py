"""Box labels (YOLO txt, COCO json, Pascal VOC xml) and box-based scores of a segmentation mask.

Many users have detection boxes but no masks. This module reads them into one form, ``Box`` (model class id
and pixel corners, x1/y1 exclusive), and scores a predicted class-id mask against them (docs/metrics.md,
"Box labels"): how many boxes the mask finds, how much of the mask lies in boxes, and a box F1 of the mask's
connected components. Pure Python/NumPy/OpenCV: used by `mafs eval --boxes` and box supervision in training.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

BOX_FORMATS = ("yolo", "coco", "voc")
YOLO_TOL = 1e-3  # normalised YOLO values may overshoot [0, 1] by this much (rounding in exporters)
PIXEL_TOL = 1.0  # pixel formats (COCO, VOC) may overshoot the image by one pixel
MSRS_BOX_CLASSES = "0:person,1:bike,2:car"  # the MSRS detection labels' ids in the MSRS class list
IGNORE = "-"  # a class-map target that drops the file's class (e.g. "3:-")


class BoxFormatError(ValueError):
    """A box file that cannot be read as labelled: the message names the file and line (or object)."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of model class ``cls`` in image pixels; (x0, y0) inclusive, (x1, y1) exclusive."""
    cls: int
    x0: float
    y0: float
    x1: float
    y1: float

    def pixel_bounds(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Integer (x0, y0, x1, y1) covering the pixels whose centres lie in the box, clipped to the image;
        at least one pixel wide and high, so a thin box is still scored."""
        x0 = min(max(math.floor(self.x0 + 0.5), 0), width - 1)
        y0 = min(max(math.floor(self.y0 + 0.5), 0), height - 1)
        x1 = min(max(math.floor(self.x1 + 0.5), x0 + 1), width)
        y1 = min(max(math.floor(self.y1 + 0.5), y0 + 1), height)
        return x0, y0, x1, y1

    def scaled(self, sx: float, sy: float) -> Box:
        """The same box on an image resized by (sx, sy), e.g. for logits at a lower resolution."""
        return Box(self.cls, self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)


# ---------------------------------------------------------------------------- class maps

def resolve_class(target: str, class_names: Sequence[str]) -> int:
    """A model class given by name (or by index) -> its id; ValueError naming the known classes."""
    names = list(class_names)
    if target in names:
        return names.index(target)
    if target.isdigit() and int(target) < len(names):
        return int(target)
    raise ValueError(f"class {target!r} is not one of the model's classes {names}")


def parse_class_map(spec: str | Mapping[str, str] | None, class_names: Sequence[str]) -> dict[str, int | None]:
    """'0:person,1:bike,2:car' -> {'0': 2, '1': 3, '2': 1} (file's class -> model class id, None = drop).

    Keys are the file's class ids (YOLO) or category names / ids (COCO, VOC); targets are the model's class
    names (or ids). A target of '-' drops that class from the file.
    """
    if spec is None:
        return {}
    items = spec.items() if isinstance(spec, Mapping) else (
        part.split(":", 1) if ":" in part else (part, "") for part in spec.split(",") if part.strip())
    out: dict[str, int | None] = {}
    for key, target in items:
        key, target = str(key).strip(), str(target).strip()
        if not key or not target:
            raise ValueError(f"class map {spec!r}: each entry must be FILE_CLASS:MODEL_CLASS, e.g. 0:person")
        if key in out:
            raise ValueError(f"class map {spec!r}: {key!r} is given twice")
        out[key] = None if target == IGNORE else resolve_class(target, class_names)
    return out


def _lookup(class_map: Mapping[str, int | None], keys: Sequence[str], where: str) -> int | None:
    for k in keys:
        if k in class_map:
            return class_map[k]
    raise BoxFormatError(f"{where}: unknown class {keys[0]!r} (class map knows {sorted(class_map)}; "
                         f"map it with --box-classes, or to '-' to drop it)")


# ---------------------------------------------------------------------------- readers

def read_yolo(path: str | Path, image_size: tuple[int, int], class_map: Mapping[str, int | None]) -> list[Box]:
    """One YOLO txt (lines `cls cx cy w h`, normalised to [0, 1]) -> boxes in pixels of an image (h, w).

    An empty file means an image without objects. Blank lines and `#` comments are skipped.
    """
    path = Path(path)
    h_img, w_img = image_size
    boxes = []
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise BoxFormatError(f"{path}: not a text file ({exc})") from exc
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{n}"
        if len(fields) != 5:
            raise BoxFormatError(f"{where}: expected 5 values 'cls cx cy w h', got {len(fields)}: {line.strip()!r}")
        if not fields[0].lstrip("-").isdigit():
            raise BoxFormatError(f"{where}: class id {fields[0]!r} is not an integer")
        try:
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError as exc:
            raise BoxFormatError(f"{where}: not a number in {line.strip()!r}") from exc
        vals = {"cx": cx, "cy": cy, "w": w, "h": h}
        bad = [f"{k}={v}" for k, v in vals.items() if not (-YOLO_TOL <= v <= 1 + YOLO_TOL)]
        if bad:
            raise BoxFormatError(f"{where}: normalised values must lie in [0, 1]: {', '.join(bad)}")
        if w <= 0 or h <= 0:
            raise BoxFormatError(f"{where}: box width and height must be > 0, got w={w}, h={h}")
        x0, x1, y0, y1 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
        if x0 < -YOLO_TOL or y0 < -YOLO_TOL or x1 > 1 + YOLO_TOL or y1 > 1 + YOLO_TOL:
            raise BoxFormatError(f"{where}: box ({x0:.4f}, {y0:.4f}, {x1:.4f}, {y1:.4f}) lies outside the image")
        cls = _lookup(class_map, [str(int(fields[0]))], where)
        if cls is not None:
            boxes.append(Box(cls, max(x0, 0.0) * w_img, max(y0, 0.0) * h_img, min(x1, 1.0) * w_img,
                             min(y1, 1.0) * h_img))
    return boxes


def write_yolo(path: str | Path, boxes: Iterable[Box], image_size: tuple[int, int],
               class_map: Mapping[str, int | None]) -> None:
    """Write boxes as YOLO txt; `class_map` is the reading map (file id -> model class), inverted here."""
    inverse = {v: k for k, v in class_map.items() if v is not None}
    h_img, w_img = image_size
    lines = []
    for b in boxes:
        if b.cls not in inverse:
            raise ValueError(f"{path}: model class {b.cls} has no file class id in the class map {dict(class_map)}")
        cx, cy = (b.x0 + b.x1) / 2 / w_img, (b.y0 + b.y1) / 2 / h_img
        lines.append(f"{inverse[b.cls]} {cx:.6f} {cy:.6f} {(b.x1 - b.x0) / w_img:.6f} {(b.y1 - b.y0) / h_img:.6f}")
    Path(path).write_text("".join(line + "\n" for line in lines))


def _check_pixels(box: Box, size: tuple[int, int] | None, where: str) -> Box:
    if not (box.x1 > box.x0 and box.y1 > box.y0):
        raise BoxFormatError(f"{where}: empty box ({box.x0}, {box.y0}, {box.x1}, {box.y1}): needs x1 > x0, y1 > y0")
    if size is not None:
        h, w = size
        if box.x0 < -PIXEL_TOL or box.y0 < -PIXEL_TOL or box.x1 > w + PIXEL_TOL or box.y1 > h + PIXEL_TOL:
            raise BoxFormatError(f"{where}: box ({box.x0}, {box.y0}, {box.x1}, {box.y1}) lies outside the "
                                 f"{w}x{h} image")
        box = Box(box.cls, max(box.x0, 0.0), max(box.y0, 0.0), min(box.x1, float(w)), min(box.y1, float(h)))
    return box


def read_coco(path: str | Path, class_map: Mapping[str, int | None] | None,
              class_names: Sequence[str]) -> dict[str, list[Box]]:
    """A COCO json -> {image stem: boxes}. Categories map by `class_map` (keys: category name or id) or,
    without a map, by name equal to a model class name (other categories are dropped: COCO has 80)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BoxFormatError(f"{path}:{exc.lineno}: broken json ({exc.msg})") from exc
    try:
        cats = {c["id"]: str(c["name"]) for c in data["categories"]}
        images = {im["id"]: im for im in data["images"]}
        anns = data.get("annotations", [])
    except (KeyError, TypeError) as exc:
        raise BoxFormatError(f"{path}: not a COCO detection file (needs images, categories: {exc})") from exc
    if not class_map:
        class_map = {name: (list(class_names).index(name) if name in class_names else None) for name in cats.values()}
        if all(v is None for v in class_map.values()):
            raise BoxFormatError(f"{path}: no category {sorted(cats.values())} is a model class {list(class_names)}; "
                                 "give a class map (--box-classes NAME:CLASS,...)")
    out: dict[str, list[Box]] = {Path(str(im.get("file_name", im_id))).stem: [] for im_id, im in images.items()}
    for i, ann in enumerate(anns):
        where = f"{path}: annotation {i} (id {ann.get('id')})"
        try:
            im = images[ann["image_id"]]
            x, y, w, h = (float(v) for v in ann["bbox"])
            cat = ann["category_id"]
        except (KeyError, TypeError, ValueError) as exc:
            raise BoxFormatError(f"{where}: needs image_id (of a listed image), bbox [x, y, w, h] and "
                                 f"category_id ({exc!r})") from exc
        if cat not in cats:
            raise BoxFormatError(f"{where}: unknown category_id {cat}")
        cls = _lookup(class_map, [cats[cat], str(cat)], where)
        if cls is None:
            continue
        size = (int(im["height"]), int(im["width"])) if "height" in im and "width" in im else None
        out[Path(str(im.get("file_name", im["id"]))).stem].append(_check_pixels(Box(cls, x, y, x + w, y + h), size,
                                                                                where))
    return out


def read_voc(path: str | Path, class_map: Mapping[str, int | None] | None, class_names: Sequence[str]) -> list[Box]:
    """A Pascal VOC xml -> boxes. VOC corners are 1-based and inclusive: (xmin - 1, ymin - 1, xmax, ymax)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise BoxFormatError(f"{path}:{exc.position[0]}: broken xml ({exc})") from exc
    size = None
    if root.find("size") is not None:
        try:
            size = (int(root.findtext("size/height")), int(root.findtext("size/width")))
        except (TypeError, ValueError):
            size = None
        if size is not None and min(size) <= 0:  # some exporters write 0 x 0: size unknown
            size = None
    boxes = []
    for i, obj in enumerate(root.iter("object"), 1):
        where = f"{path}: object {i}"
        name = (obj.findtext("name") or "").strip()
        try:
            x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as exc:
            raise BoxFormatError(f"{where} ({name!r}): needs bndbox xmin/ymin/xmax/ymax numbers") from exc
        if class_map:
            cls = _lookup(class_map, [name], where)
        elif name in class_names:
            cls = list(class_names).index(name)
        else:
            raise BoxFormatError(f"{where}: unknown class {name!r} (model classes {list(class_names)}; "
                                 "map it with --box-classes NAME:CLASS or NAME:-)")
        if cls is not None:
            boxes.append(_check_pixels(Box(cls, x0 - 1, y0 - 1, x1, y1), size, where))
    return boxes


def detect_format(path: str | Path) -> str:
    """'coco' for a .json file, else by what a folder holds: .txt -> 'yolo', .xml -> 'voc'."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "coco"
        raise ValueError(f"{path}: a box file must be a COCO .json; YOLO and VOC boxes are folders of .txt / .xml")
    if not path.is_dir():
        raise FileNotFoundError(f"box labels not found: {path}")
    suffixes = {p.suffix.lower() for p in path.iterdir()}
    found = [fmt for fmt, suf in (("yolo", ".txt"), ("voc", ".xml")) if suf in suffixes]
    if len(found) != 1:
        raise ValueError(f"{path}: cannot tell the box format (holds {sorted(suffixes)}); give --box-format")
    return found[0]


class BoxSource:
    """Box labels of a set of images: `boxes(name, (h, w))` -> list of boxes, or None for an image without a
    box file (not labelled, unlike an empty file: labelled, no objects)."""

    def __init__(self, path: str | Path, class_names: Sequence[str], fmt: str = "auto",
                 class_map: str | Mapping[str, str] | None = None):
        self.path = Path(path)
        self.class_names = list(class_names)
        self.format = detect_format(self.path) if fmt == "auto" else fmt
        if self.format not in BOX_FORMATS:
            raise ValueError(f"box format must be one of {BOX_FORMATS} or auto, got {fmt!r}")
        self.class_map = parse_class_map(class_map, self.class_names)
        if self.format == "yolo" and not self.class_map:
            raise ValueError(f"YOLO boxes carry class ids only: give a class map, e.g. --box-classes "
                             f"{MSRS_BOX_CLASSES} for MSRS")
        if self.format == "coco" and not self.path.is_file():
            raise ValueError(f"{self.path}: COCO boxes are one .json file")
        if self.format != "coco" and not any(self.path.glob(f"*.{'txt' if self.format == 'yolo' else 'xml'}")):
            raise ValueError(f"{self.path}: no {self.format} box files (.{'txt' if self.format == 'yolo' else 'xml'})")
        self._coco = read_coco(self.path, self.class_map, self.class_names) if self.format == "coco" else None
        if self.class_map:
            self.classes = sorted({v for v in self.class_map.values() if v is not None})
        else:  # matched by name: the classes the files name (scanning also finds broken files up front)
            per_image = self._coco.values() if self._coco is not None else (
                read_voc(f, None, self.class_names) for f in sorted(self.path.glob("*.xml")))
            self.classes = sorted({b.cls for boxes in per_image for b in boxes})

    def boxes(self, name: str, image_size: tuple[int, int]) -> list[Box] | None:
        if self._coco is not None:
            return self._coco.get(name)
        if self.format == "yolo":
            f = self.path / f"{name}.txt"
            return read_yolo(f, image_size, self.class_map) if f.is_file() else None
        f = self.path / f"{name}.xml"
        return read_voc(f, self.class_map, self.class_names) if f.is_file() else None


# ---------------------------------------------------------------------------- metrics

def box_masks(boxes: Sequence[Box], shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """[C, H, W] bool: pixel inside some box of class c (the pixels of Box.pixel_bounds)."""
    out = np.zeros((num_classes, *shape), bool)
    for b in boxes:
        x0, y0, x1, y1 = b.pixel_bounds(*shape)
        out[b.cls, y0:y1, x0:x1] = True
    return out


def component_boxes(binary: np.ndarray, min_area: int = 16) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1; exclusive ends) of the 8-connected components of at least min_area px."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, a in stats[1:n] if a >= min_area]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of integer boxes [N, 4] x [M, 4] (x0, y0, x1, y1; exclusive ends)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def greedy_matches(iou: np.ndarray, threshold: float = 0.5) -> int:
    """One-to-one matches, highest IoU first, of pairs with IoU >= threshold; returns their count."""
    if iou.size == 0:
        return 0
    used_r, used_c, n = set(), set(), 0
    order = np.argsort(-iou, axis=None, kind="stable")
    for r, c in zip(*np.unravel_index(order, iou.shape)):
        if iou[r, c] < threshold:
            break
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            n += 1
    return n


# Count columns of BoxScores: boxes, boxes found, predicted px, predicted px in boxes, component TP, FP, FN.
_COUNTS = ("boxes", "found", "pred_pixels", "pred_in_boxes", "tp", "fp", "fn")


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def _f(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


class BoxScores:
    """Box scores of predicted masks, pooled over frames (counts are summed, ratios taken at the end).

    For each class c in `classes`: boxes found (share of c-boxes with >= min_cover of their pixels predicted
    c), pixels in boxes (share of c-predicted pixels inside some c-box), their F, and the F1 of the mask's
    connected components (>= min_area px) matched one-to-one to the boxes at IoU >= iou_threshold.
    """

    def __init__(self, classes: Sequence[int], class_names: Sequence[str], min_cover: float = 0.3,
                 min_area: int = 16, iou_threshold: float = 0.5):
        self.classes = list(classes)
        self.class_names = list(class_names)
        self.min_cover, self.min_area, self.iou_threshold = min_cover, min_area, iou_threshold
        self.counts = np.zeros((len(self.classes), len(_COUNTS)), np.int64)
        self.num_images = 0

    def frame_counts(self, mask: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """The counts of one frame ([classes, 7]); pure, so frames can be scored on several threads."""
        h, w = mask.shape
        counts = np.zeros_like(self.counts)
        for i, c in enumerate(self.classes):
            pred = mask == c
            gt = [b.pixel_bounds(h, w) for b in boxes if b.cls == c]
            inside = np.zeros((h, w), bool)
            found = 0
            for x0, y0, x1, y1 in gt:
                inside[y0:y1, x0:x1] = True
                found += pred[y0:y1, x0:x1].mean() >= self.min_cover
            comps = component_boxes(pred, self.min_area)
            tp = greedy_matches(box_iou(np.array(comps), np.array(gt)), self.iou_threshold)
            counts[i] = (len(gt), found, pred.sum(), (pred & inside).sum(), tp, len(comps) - tp, len(gt) - tp)
        return counts

    def add_counts(self, counts: np.ndarray) -> None:
        self.counts += counts
        self.num_images += 1

    def update(self, mask: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        counts = self.frame_counts(mask, boxes)
        self.add_counts(counts)
        return counts

    def to_dict(self) -> dict[str, Any]:
        """{"num_images", "per_class": {name: scores and counts}, "mean": mean over classes with boxes}.

        A ratio without a denominator (no boxes, nothing predicted) is None, and left out of the mean.
        """
        per_class: dict[str, dict[str, Any]] = {}
        for c, row in zip(self.classes, self.counts):
            n = dict(zip(_COUNTS, (int(v) for v in row)))
            found, in_box = _ratio(n["found"], n["boxes"]), _ratio(n["pred_in_boxes"], n["pred_pixels"])
            cc = 2 * n["tp"] + n["fp"] + n["fn"]
            per_class[self.class_names[c]] = {"boxes_found": found, "pixels_in_boxes": in_box,
                                              "box_f": _f(in_box, found), "cc_f1": _ratio(2 * n["tp"], cc), **n}
        mean = {}
        for k in ("boxes_found", "pixels_in_boxes", "box_f", "cc_f1"):
            vals = [v[k] for v in per_class.values() if v["boxes"] and v[k] is not None]
            mean[k] = float(np.mean(vals)) if vals else None
        return {"num_images": self.num_images, "min_cover": self.min_cover, "min_area": self.min_area,
                "iou_threshold": self.iou_threshold, "per_class": per_class, "mean": mean}


def draw_boxes(img: np.ndarray, boxes: Sequence[Box], palette: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """A copy of a BGR (or grey) image with the boxes drawn in their class colours (palette is RGB)."""
    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img.copy()
    h, w = out.shape[:2]
    for b in boxes:
        x0, y0, x1, y1 = b.scaled(scale, scale).pixel_bounds(h, w)
        rgb = np.asarray(palette[min(b.cls, len(palette) - 1)], np.float64)
        r, g, bl = (int(v) for v in rgb * 255 / max(rgb.max(), 1))  # the class hue at full brightness: visible
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (bl, g, r), 1)
    return out
