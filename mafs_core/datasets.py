"""Training/validation datasets for paired IR + visible images (+ optional segmentation labels).

One factory, `build_dataset(kind, root, split)`, reads every supported layout into a flat list of `Record`s;
`PairDataset` turns records into tensors with augmentations that stay consistent across IR, VIS, label and
detection boxes (a record's optional `box_source`, see mafs_core.boxes); `collate` batches them.
Randomness is a pure function of (seed, epoch, index) so that data order and augmentations replay exactly
after a resume, whatever the number of DataLoader workers or DDP ranks.

Layouts (`kind`):
  paired  ROOT/{ir,vi|vis}/ [+ label/]      (also ROOT/SPLIT/...; what `mafs bag export` writes)
  msrs    ROOT/{train,test}/{ir,vi,Segmentation_labels}
  mfnet   ROOT/images/*.png (4-channel RGB+T), ROOT/labels/*.png, ROOT/{train,val,test}.txt
  fmb     ROOT/{train,test}/{Infrared,Visible,Label}
  pst900  ROOT/{train,test}/{thermal,rgb,labels}
  auto    detects one of the above.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import kornia.enhance as KE
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from mafs_core.io import IMAGE_EXTS, list_pairs, read_image, read_ir, read_label, read_vis
from mafs_core.preprocess import ThermalNormalizer

log = logging.getLogger(__name__)
IGNORE_INDEX = 255
MAX_BOXES = 256  # per frame; more are cut to the largest ones, with a warning
MIN_BOX_SIDE = 4.0  # px: a box the crop leaves thinner than this is dropped (nothing left to supervise)
KINDS = ("paired", "msrs", "mfnet", "fmb", "pst900")
# (ir folder, vis folder, label folder) per split-folder layout
_SPLIT_LAYOUTS = {
    "msrs": ("ir", "vi", "Segmentation_labels"),
    "fmb": ("Infrared", "Visible", "Label"),
    "pst900": ("thermal", "rgb", "labels"),
}


@dataclass(frozen=True)
class Record:
    name: str
    ir: Path | None  # None for MFNet: both modalities live in `rgbt`
    vis: Path | None
    label: Path | None = None
    rgbt: Path | None = None  # 4-channel PNG (B,G,R,T as read by OpenCV)
    box_source: Any = None  # mafs_core.boxes.BoxSource of the record's dataset, or None (no box labels)


@dataclass
class AugmentConfig:
    """Geometric augmentations act on IR, VIS and label alike; photometric jitter touches VIS only."""

    resize: list[int] | None = None  # [H, W] applied first (train and val), e.g. to train at reduced resolution
    crop: list[int] | None = None  # [H, W] random crop in training (the image is scaled up to cover it if needed)
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # random scale range (training)
    hflip: bool = True
    brightness: float = 0.0  # factor drawn from [1-b, 1+b]
    contrast: float = 0.0
    saturation: float = 0.0
    cutmix: float = 0.0  # per-frame probability of a box pasted from another frame of the batch (training step)
    class_crop: float = 0.0  # probability that a crop is centred on a pixel of a class drawn among those present


def cutmix(ir: torch.Tensor, vis: torch.Tensor, label: torch.Tensor, has_label: torch.Tensor, prob: float,
           generator: torch.Generator | None = None, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """CutMix across a batch (Yun et al., ICCV 2019): with probability `prob` a frame gets a box (a quarter to
    three quarters of each side) from the next frame of the batch, in IR, VIS and label alike.

    Why: with a few hundred training frames the student learns the teacher only on those scenes; mixed
    frames put people and cars into new surroundings, and the teacher labels whatever the student sees
    (distillation is consistent under any input change). A mixed frame counts as labelled only if both
    sources were. Runs on the batch, after the loader, so it needs no second image per sample. Frames with
    `keep` True receive nothing (their detection boxes describe them as they are).
    """
    b, _, h, w = ir.shape
    if prob <= 0 or b < 2:
        return ir, vis, label, has_label
    dev = generator.device if generator is not None else ir.device
    u = torch.rand(b, 5, generator=generator, device=dev).to(ir.device)
    ys, xs = torch.arange(h, device=ir.device), torch.arange(w, device=ir.device)
    bh, bw = ((0.25 + 0.5 * u[:, 0]) * h).long(), ((0.25 + 0.5 * u[:, 1]) * w).long()
    y0, x0 = (u[:, 2] * (h - bh + 1)).long(), (u[:, 3] * (w - bw + 1)).long()
    box = (((ys[None] >= y0[:, None]) & (ys[None] < (y0 + bh)[:, None]))[:, :, None]
           & ((xs[None] >= x0[:, None]) & (xs[None] < (x0 + bw)[:, None]))[:, None, :])
    box &= (u[:, 4] < prob)[:, None, None]
    if keep is not None:
        box &= ~keep.to(ir.device).view(-1, 1, 1)
    src = torch.roll(torch.arange(b, device=ir.device), -1)
    m = box[:, None]
    mixed = box.flatten(1).any(1)
    has = torch.where(mixed.to(has_label.device), has_label & has_label[src.to(has_label.device)], has_label)
    return (torch.where(m, ir[src], ir), torch.where(m, vis[src], vis), torch.where(box, label[src], label), has)


# --------------------------------------------------------------------------------------------------- layouts
def _vis_dir(root: Path) -> Path | None:
    for name in ("vi", "vis", "visible", "rgb"):
        if (root / name).is_dir():
            return root / name
    return None


def detect_kind(root: str | Path, split: str = "train") -> str:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    if (root / "images").is_dir() and any((root / f"{s}.txt").is_file() for s in ("train", "val", "test")):
        return "mfnet"
    for kind, (ir, vi, _) in _SPLIT_LAYOUTS.items():
        if (root / split / ir).is_dir() and (root / split / vi).is_dir():
            return kind
    if (root / "ir").is_dir() and _vis_dir(root) is not None:
        return "paired"
    if (root / split / "ir").is_dir() and _vis_dir(root / split) is not None:
        return "paired"
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise ValueError(f"cannot detect the dataset layout of {root} (sub-folders: {subdirs[:10]}); expected one of "
                     f"{KINDS}: see mafs_core/datasets.py")


def list_records(kind: str, root: str | Path, split: str = "train") -> list[Record]:
    """All samples of one dataset split, sorted by name. Raises on mismatched names."""
    root = Path(root)
    if kind == "auto":
        kind = detect_kind(root, split)
    if kind == "mfnet":
        lst = root / f"{split}.txt"
        if not lst.is_file():
            raise FileNotFoundError(f"MFNet split list not found: {lst}")
        names = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
        missing = [n for n in names if not (root / "images" / f"{n}.png").is_file()]
        if missing:
            raise ValueError(f"{len(missing)} names in {lst} have no image in {root / 'images'}: {missing[:5]}")
        labels = root / "labels"
        return [Record(n, None, None, labels / f"{n}.png" if (labels / f"{n}.png").is_file() else None,
                       root / "images" / f"{n}.png") for n in names]
    if kind in _SPLIT_LAYOUTS:
        ir_name, vi_name, lab_name = _SPLIT_LAYOUTS[kind]
        base = root / split
        ir_dir, vi_dir, lab_dir = base / ir_name, base / vi_name, base / lab_name
    elif kind == "paired":
        base = root if (root / "ir").is_dir() else root / split
        ir_dir, vi_dir, lab_dir = base / "ir", _vis_dir(base), base / "label"
        if vi_dir is None:
            raise FileNotFoundError(f"no visible folder (vi/ or vis/) in {base}")
        if not lab_dir.is_dir():
            lab_dir = base / "labels"
    else:
        raise ValueError(f"unknown dataset kind {kind!r}; expected 'auto' or one of {KINDS}")
    for d in (ir_dir, vi_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{kind} layout: folder not found: {d}")
    has_labels = lab_dir.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in lab_dir.iterdir())
    pairs = list_pairs(ir_dir, vi_dir, lab_dir if has_labels else None, strict=True)
    return [Record(p.name, p.ir, p.vis, p.label) for p in pairs]


def read_names(path: str | Path) -> set[str]:
    """A split file: one image name (stem) per line, `#` comments; the committed validation split uses it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"split file not found: {p}")
    names = {line.split("#", 1)[0].strip() for line in p.read_text().splitlines()}
    names.discard("")
    if not names:
        raise ValueError(f"split file {p} lists no names")
    return {Path(n).stem for n in names}


def holdout_split(records: Sequence[Record], every: int, subset: str,
                  names: set[str] | None = None) -> list[Record]:
    """Deterministic validation hold-out: every `every`-th record (by sorted name) is validation, and so is
    every record whose name is in `names` (a committed split file, see read_names)."""
    if (every <= 0 and not names) or subset == "all":
        return list(records)
    if subset not in ("train", "val"):
        raise ValueError(f"holdout subset must be 'train', 'val' or 'all', got {subset!r}")
    keep_val = subset == "val"
    names = names or set()
    return [r for i, r in enumerate(records)
            if ((every > 0 and i % every == every - 1) or Path(r.name).stem in names) == keep_val]


def repeat_factors(records: Sequence[Record], num_classes: int, threshold: float,
                   ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Repeat-factor sampling (Gupta et al., LVIS, CVPR 2019): an image is repeated
    r = max(1, max_c sqrt(t / f_c)) times over the classes c it shows, f_c = share of labelled images showing c.

    Why: on MSRS guardrail is in 7 of 247 frames and bump in 16; uniform sampling shows them a few times per
    epoch and their IoU collapses. Rounded to whole repeats so the epoch stays a plain list. Class 0 and
    unlabelled records count as 1.
    """
    present: list[np.ndarray | None] = []
    for r in records:
        if r.label is None:
            present.append(None)
            continue
        lab = read_label(r.label)
        counts = np.bincount(lab[lab != ignore_index].ravel(), minlength=num_classes)[:num_classes]
        present.append(counts > 0)
    labelled = [p for p in present if p is not None]
    if not labelled or threshold <= 0:
        return [1] * len(records)
    freq = np.mean(labelled, axis=0)
    out = []
    for p in present:
        if p is None or not p[1:].any():
            out.append(1)
            continue
        r = max(1.0, float(np.max(np.sqrt(threshold / freq[1:][p[1:]]))))
        out.append(round(r))
    return out


# --------------------------------------------------------------------------------------------------- dataset
class PairDataset(Dataset):
    """Samples: ir [1,H,W] float [0,1], vis [3,H,W] RGB float [0,1], label [H,W] long (255 = ignore),
    has_label bool, boxes [n,5] float (class, x0, y0, x1, y1 in the sample's pixels), has_boxes bool
    (False: the frame has no box labels, unlike an empty box file), name str."""

    def __init__(self, records: Sequence[Record], num_classes: int = 9, train: bool = False,
                 augment: AugmentConfig | None = None, seed: int = 0, ignore_index: int = IGNORE_INDEX,
                 thermal_norm_8bit: str = "minmax", thermal_norm_16bit: str = "percentile", repeat: int = 1):
        if not records:
            raise ValueError("empty dataset: no image pairs found")
        self.records = list(records)
        self.num_classes, self.train, self.seed, self.ignore_index = num_classes, train, seed, ignore_index
        self.aug = augment or AugmentConfig()
        self.norm8 = ThermalNormalizer(mode=thermal_norm_8bit, smoothing=0.0)
        self.norm16 = ThermalNormalizer(mode=thermal_norm_16bit, smoothing=0.0)
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        # `repeat` passes over the records per epoch, each with its own augmentation: small datasets then
        # make long epochs, so loader workers are not re-spawned every few steps.
        self.repeat = repeat
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) * self.repeat

    # -- reading
    def _thermal(self, raw: np.ndarray) -> np.ndarray:
        if raw.dtype == np.uint8:
            return self.norm8(raw)
        if raw.dtype in (np.uint16, np.int16):
            return self.norm16(raw)
        return ThermalNormalizer(mode="minmax", smoothing=0.0)(raw.astype(np.float32))

    def load(self, rec: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(ir HxW float32 [0,1], vis HxWx3 RGB float32 [0,1], label HxW int64 or None), sizes checked."""
        if rec.rgbt is not None:
            img = read_image(rec.rgbt)
            if img.ndim != 3 or img.shape[2] != 4:
                raise ValueError(f"MFNet image must have 4 channels (RGB+T), got shape {img.shape}: {rec.rgbt}")
            vis = img[..., 2::-1]
            if vis.dtype != np.uint8:
                vis = (vis.astype(np.float32) / np.iinfo(vis.dtype).max * 255).astype(np.uint8)
            ir_raw = np.ascontiguousarray(img[..., 3])
            srcs = {"rgbt": rec.rgbt}
        else:
            ir_raw = read_ir(rec.ir)
            vis = cv2.cvtColor(read_vis(rec.vis), cv2.COLOR_BGR2RGB)
            srcs = {"ir": rec.ir, "vis": rec.vis}
            if ir_raw.shape[:2] != vis.shape[:2]:
                raise ValueError(f"size mismatch for '{rec.name}': IR {ir_raw.shape[1]}x{ir_raw.shape[0]} "
                                 f"({rec.ir}) vs VIS {vis.shape[1]}x{vis.shape[0]} ({rec.vis})")
        label = None
        if rec.label is not None:
            label = read_label(rec.label).astype(np.int64)
            if label.shape[:2] != vis.shape[:2]:
                raise ValueError(f"size mismatch for '{rec.name}': label {label.shape[1]}x{label.shape[0]} "
                                 f"({rec.label}) vs image {vis.shape[1]}x{vis.shape[0]} ({next(iter(srcs.values()))})")
            bad = label[(label >= self.num_classes) & (label != self.ignore_index)]
            if bad.size:
                raise ValueError(f"label value {int(bad.max())} outside the class range 0..{self.num_classes - 1} "
                                 f"(ignore index {self.ignore_index}) in {rec.label}")
        ir = self._thermal(ir_raw).astype(np.float32)
        return ir, vis.astype(np.float32) / 255.0, label

    # -- augmentation
    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _boxes(self, rec: Record, shape: tuple[int, int]) -> np.ndarray | None:
        """[n, 5] float (class, x0, y0, x1, y1) in the loaded frame's pixels, or None without box labels."""
        if rec.box_source is None:
            return None
        boxes = rec.box_source.boxes(rec.name, shape)
        if boxes is None:
            return None
        out = np.array([(b.cls, b.x0, b.y0, b.x1, b.y1) for b in boxes], np.float32).reshape(-1, 5)
        if len(out) > MAX_BOXES:
            log.warning("%s: %d boxes, keeping the %d largest", rec.name, len(out), MAX_BOXES)
            area = (out[:, 3] - out[:, 1]) * (out[:, 4] - out[:, 2])
            out = out[np.sort(np.argsort(-area)[:MAX_BOXES])]
        return out

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index % len(self.records)]
        ir, vis, label = self.load(rec)
        has_label = label is not None
        if label is None:
            label = np.full(ir.shape, self.ignore_index, np.int64)
        boxes = self._boxes(rec, ir.shape)
        a = self.aug
        if a.resize:
            boxes = _scale_boxes(boxes, ir.shape, (a.resize[0], a.resize[1]))
            ir, vis, label = _resize(ir, vis, label, (a.resize[0], a.resize[1]))
        jitter = None
        if self.train:
            rng = self._rng(index)
            h, w = ir.shape
            s = float(rng.uniform(a.scale[0], a.scale[1]))
            if a.crop:
                s = max(s, a.crop[0] / h, a.crop[1] / w)  # never pad: scale up until the crop fits
            if s != 1.0:
                size = (max(1, math.ceil(h * s)), max(1, math.ceil(w * s)))
                boxes = _scale_boxes(boxes, ir.shape, size)
                ir, vis, label = _resize(ir, vis, label, size)
            if a.crop:
                ch, cw = a.crop
                y0 = int(rng.integers(0, ir.shape[0] - ch + 1))
                x0 = int(rng.integers(0, ir.shape[1] - cw + 1))
                if has_label and a.class_crop > 0 and rng.random() < a.class_crop:
                    y0, x0 = _class_crop(label, ch, cw, rng, self.ignore_index, (y0, x0))
                ir, vis, label = (t[y0:y0 + ch, x0:x0 + cw] for t in (ir, vis, label))
                boxes = _crop_boxes(boxes, y0, x0, ch, cw)
            if a.hflip and rng.random() < 0.5:
                ir, vis, label = ir[:, ::-1], vis[:, ::-1], label[:, ::-1]
                if boxes is not None:
                    boxes[:, [1, 3]] = ir.shape[1] - boxes[:, [3, 1]]
            jitter = [float(rng.uniform(1 - v, 1 + v)) for v in (a.brightness, a.contrast, a.saturation)]
        ir_t = torch.from_numpy(np.ascontiguousarray(ir))[None]
        vis_t = torch.from_numpy(np.ascontiguousarray(vis)).permute(2, 0, 1).contiguous()
        if jitter is not None and any(j != 1.0 for j in jitter):
            # kornia's functional ops with factors drawn from our (seed, epoch, index) generator: replayable
            vis_t = KE.adjust_brightness(vis_t, jitter[0] - 1.0)  # additive shift in kornia
            vis_t = KE.adjust_contrast(vis_t, jitter[1])
            vis_t = KE.adjust_saturation(vis_t, jitter[2]).clamp(0.0, 1.0)
        return {"ir": ir_t, "vis": vis_t, "label": torch.from_numpy(np.ascontiguousarray(label)),
                "has_label": torch.tensor(has_label),
                "boxes": torch.from_numpy(boxes if boxes is not None else np.zeros((0, 5), np.float32)),
                "has_boxes": torch.tensor(boxes is not None), "name": rec.name}


def collate(samples: list[dict]) -> dict:
    """Default collation, except the boxes: one [N, 6] float tensor (image index in the batch, class, x0, y0,
    x1, y1), since frames hold different numbers of boxes."""
    rows = [torch.cat([torch.full((len(s["boxes"]), 1), float(i)), s["boxes"]], 1) for i, s in enumerate(samples)]
    batch = default_collate([{k: v for k, v in s.items() if k != "boxes"} for s in samples])
    batch["boxes"] = torch.cat(rows) if rows else torch.zeros(0, 6)
    return batch


def _scale_boxes(boxes: np.ndarray | None, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray | None:
    if boxes is None or tuple(old) == tuple(new):
        return boxes
    out = boxes.copy()
    out[:, [1, 3]] *= new[1] / old[1]
    out[:, [2, 4]] *= new[0] / old[0]
    return out


def _crop_boxes(boxes: np.ndarray | None, y0: int, x0: int, ch: int, cw: int) -> np.ndarray | None:
    """Boxes in the crop's pixels: shifted, clipped to the crop, and dropped when under MIN_BOX_SIDE."""
    if boxes is None:
        return None
    out = boxes.copy()
    out[:, [1, 3]] = np.clip(out[:, [1, 3]] - x0, 0, cw)
    out[:, [2, 4]] = np.clip(out[:, [2, 4]] - y0, 0, ch)
    keep = (out[:, 3] - out[:, 1] >= MIN_BOX_SIDE) & (out[:, 4] - out[:, 2] >= MIN_BOX_SIDE)
    return out[keep]


def _class_crop(label: np.ndarray, ch: int, cw: int, rng: np.random.Generator, ignore_index: int,
                fallback: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of a crop centred (as far as the frame allows) on a random pixel of a class drawn
    uniformly among the foreground classes present: thin, rare classes (bump, guardrail, cone) then fill
    crops as often as cars do (class-balanced cropping, as in the rare-class sampling of DAFormer, Hoyer et al.
    CVPR 2022)."""
    classes = [c for c in np.unique(label) if c not in (0, ignore_index)]
    if not classes:
        return fallback
    c = classes[int(rng.integers(len(classes)))]
    ys, xs = np.nonzero(label == c)
    k = int(rng.integers(len(ys)))
    y0 = int(np.clip(ys[k] - ch // 2, 0, label.shape[0] - ch))
    x0 = int(np.clip(xs[k] - cw // 2, 0, label.shape[1] - cw))
    return y0, x0


def _resize(ir: np.ndarray, vis: np.ndarray, label: np.ndarray, size: tuple[int, int]):
    h, w = size
    if ir.shape == (h, w):
        return ir, vis, label
    interp = cv2.INTER_AREA if h < ir.shape[0] else cv2.INTER_LINEAR
    ir = cv2.resize(np.ascontiguousarray(ir), (w, h), interpolation=interp)
    vis = cv2.resize(np.ascontiguousarray(vis), (w, h), interpolation=interp)
    label = cv2.resize(np.ascontiguousarray(label).astype(np.uint8 if label.max() < 256 else np.int32), (w, h),
                       interpolation=cv2.INTER_NEAREST).astype(np.int64)
    return ir, vis, label


def build_dataset(kind: str, root: str | Path, split: str = "train", *, num_classes: int = 9, train: bool = False,
                  augment: AugmentConfig | None = None, seed: int = 0, holdout_every: int = 0,
                  holdout: str = "all", **kwargs) -> PairDataset:
    """The one factory: `kind` in KINDS or "auto"; `holdout_every`/`holdout` carve a validation subset
    ("train" drops every N-th pair, "val" keeps only those)."""
    records = holdout_split(list_records(kind, root, split), holdout_every, holdout)
    if not records:
        raise ValueError(f"no samples in {root} (kind={kind}, split={split}, holdout={holdout})")
    return PairDataset(records, num_classes=num_classes, train=train, augment=augment, seed=seed, **kwargs)
