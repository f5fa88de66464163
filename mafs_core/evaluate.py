"""`mafs eval`: run the engine over paired folders and report fusion metrics, IoU and samples.

The reusable part is ``Evaluator``: feed it (name, ir, vis, FusionResult, label) one frame at a time,
from folders (`mafs eval`) or a bag stream (`mafs bag eval`), then ``finish(out_dir)`` writes
report.json, report.md, iou.png (when labelled) and samples.png, and returns the report dict.
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from mafs_core.boxes import BOX_FORMATS, Box, BoxScores, BoxSource, draw_boxes
from mafs_core.classes import default_palette
from mafs_core.metrics import FUSION_METRICS, ConfusionMatrix, baseline_fusions, binary_masks, fusion_metrics, to_gray
from mafs_core.report import Sample, markdown_report, plot_iou, plot_samples, write_json
from mafs_core.tta import add_tta_args, tta_overrides

log = logging.getLogger(__name__)

_CONDITION = re.compile(r"\d([DN])$")  # MSRS/MFNet names: 00004N = night, 00055D = day
CONDITIONS = {"D": "day", "N": "night"}


class ResultLike(Protocol):
    """What the evaluator reads from mafs_core.engine.FusionResult."""
    fused_bgr: np.ndarray
    mask: np.ndarray
    overlay: np.ndarray | None
    timings: dict[str, float]


@dataclass(frozen=True)
class LabelMode:
    """How label images are read: 'multiclass' (ids, 255 ignored) or binary one-class masks (0 / non-zero)."""
    kind: str = "multiclass"
    class_id: int | None = None
    class_name: str | None = None

    def __str__(self) -> str:
        return self.kind if self.kind == "multiclass" else f"binary:{self.class_name}"


def parse_label_mode(spec: str | LabelMode, class_names: Sequence[str]) -> LabelMode:
    """'multiclass' or 'binary:CLASSNAME' (e.g. binary:person for msrs_person_masks)."""
    if isinstance(spec, LabelMode):
        return spec
    if spec == "multiclass":
        return LabelMode()
    if spec.startswith("binary:"):
        name = spec.split(":", 1)[1]
        if name not in class_names:
            raise ValueError(f"label mode {spec!r}: class {name!r} not in the model's classes {list(class_names)}")
        return LabelMode("binary", list(class_names).index(name), name)
    raise ValueError(f"label mode must be 'multiclass' or 'binary:CLASSNAME', got {spec!r}")


def condition_of(name: str) -> str | None:
    m = _CONDITION.search(name)
    return CONDITIONS[m.group(1)] if m else None


def ir_to_uint8(ir: np.ndarray) -> np.ndarray:
    """The IR source image the metrics compare against: 8-bit IR as is (as papers do), other depths min-max
    stretched with the engine's ThermalNormalizer (the same view of the scene the network got)."""
    if ir.ndim == 3:
        ir = to_gray(ir) if ir.dtype == np.uint8 else ir[..., 0]
    if ir.dtype == np.uint8:
        return ir
    from mafs_core.preprocess import ThermalNormalizer

    return np.round(ThermalNormalizer("minmax")(ir) * 255.0).astype(np.uint8)


def make_overlay(vis_bgr: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Class colours blended over the visible image (used when the engine was asked for no overlay)."""
    color = palette[np.clip(mask, 0, len(palette) - 1)][..., ::-1]  # RGB palette -> BGR
    out = cv2.addWeighted(vis_bgr, 1 - alpha, np.ascontiguousarray(color), alpha, 0)
    return np.where(mask[..., None] == 0, vis_bgr, out)  # class 0 (unlabelled) stays see-through


def _thumb(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    if w <= width:
        return img.copy()
    return cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def _stats(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "n": len(a)}


class Evaluator:
    """Accumulates per-frame metrics; memory stays bounded (sums, one confusion matrix, a few thumbnails).

    Per-image metric values are kept (a few floats each) for report.json unless keep_per_image=False.
    """

    def __init__(self, class_names: Sequence[str], palette: np.ndarray | None = None,
                 label_mode: str | LabelMode = "multiclass", baselines: bool = False, num_samples: int = 6,
                 thumb_width: int = 320, metrics: Sequence[str] = FUSION_METRICS, keep_per_image: bool = True,
                 box_classes: Sequence[int] | None = None, box_info: dict | None = None):
        self.class_names = list(class_names)
        self.palette = np.asarray(palette if palette is not None else default_palette(len(self.class_names)), np.uint8)
        self.label_mode = parse_label_mode(label_mode, self.class_names)
        self.baselines = baselines
        self.num_samples = num_samples
        self.thumb_width = thumb_width
        self.metrics = tuple(metrics)
        self.keep_per_image = keep_per_image
        if self.label_mode.kind == "binary":
            self.seg_names = [f"not_{self.label_mode.class_name}", self.label_mode.class_name]
            self.cm = ConfusionMatrix(2, ignore_index=None)
        else:
            self.seg_names = self.class_names
            self.cm = ConfusionMatrix(len(self.class_names), ignore_index=255)
        self.num_images = 0
        self.num_labelled = 0
        self.teacher_cm: ConfusionMatrix | None = None  # --baseline-teacher: the teacher on the same frames
        # --boxes: box scores of the mask (mafs_core.boxes), for frames given with a box list
        self.box_scores = BoxScores(box_classes, self.class_names) if box_classes is not None else None
        self.box_info = dict(box_info or {})
        self._sums: dict[tuple[str | None, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._counts: dict[str | None, int] = defaultdict(int)
        self._pred_pixels = np.zeros(len(self.class_names), np.int64)
        self._timings: dict[str, list[float]] = defaultdict(list)
        self._samples: dict[str | None, list[Sample]] = defaultdict(list)
        self.per_image: list[dict] = []
        self.skipped: list[dict] = []
        self.warnings: dict[str, int] = defaultdict(int)
        self._warn_lock = threading.Lock()

    def skip(self, name: str, reason: str) -> None:
        """Record a frame that could not be evaluated (unreadable file, engine error) without stopping."""
        if len(self.skipped) < 3:
            log.warning("skipping %s: %s", name, reason)
        self.skipped.append({"name": name, "reason": reason})

    def _warn(self, key: str, msg: str) -> None:
        """Count a recoverable problem; log only its first occurrences so long bag runs stay readable."""
        with self._warn_lock:  # scoring may run on several threads (add_many)
            self.warnings[key] += 1
            n = self.warnings[key]
        if n <= 3:
            log.warning("%s%s", msg, " (further ones only counted)" if n == 3 else "")

    def add(self, name: str, ir: np.ndarray, vis_bgr: np.ndarray, result: ResultLike,
            label: np.ndarray | None = None, boxes: Sequence[Box] | None = None) -> dict[str, Any]:
        """Evaluate one frame; returns its per-image record (metrics per method, IoU when labelled).

        `boxes` (in pixels of the visible image; None = no box labels) are scored when the evaluator has
        box_classes, and drawn on the frame's sample thumbnail.

        A frame that cannot be scored (wrong dtype, sizes that do not match, images too small) is
        recorded under "skipped" and returns {"name", "skipped"}: evaluation of a stream never stops on it.
        """
        return self._commit(name, result, self._try_score(name, ir, vis_bgr, result, label, boxes))

    def add_many(self, frames: Sequence[tuple], pool: Executor | None = None) -> list[dict[str, Any]]:
        """add(*frame) for each frame. With a thread pool the frames are scored in parallel (OpenCV and NumPy
        release the GIL; scoring is the slow part of a bag replay) and committed in order, so the report is
        the same as from one add() at a time."""
        if pool is None or len(frames) < 2:
            return [self.add(*f) for f in frames]
        scored = list(pool.map(lambda f: self._try_score(*f), frames))
        return [self._commit(f[0], f[3], s) for f, s in zip(frames, scored)]

    def _try_score(self, *frame: Any) -> tuple | ValueError:
        try:
            return self._score(*frame)
        except ValueError as exc:
            return exc

    def _commit(self, name: str, result: ResultLike, scored: tuple | ValueError) -> dict[str, Any]:
        if isinstance(scored, ValueError):
            self.skip(name, str(scored))
            return {"name": name, "skipped": str(scored)}
        record, cm, ir8, vis_bgr, mask, box_counts, boxes = scored
        # Commit only after everything was computed, so a bad frame leaves no partial sums behind.
        cond = record["condition"]
        for key in {None, cond}:
            self._counts[key] += 1
            for method in ("model", "max", "mean"):
                for k, v in record.get(method, {}).items():
                    self._sums[(key, method)][k] += v
        n = len(self.class_names)
        self._pred_pixels += np.bincount(np.clip(mask.ravel(), 0, n - 1), minlength=n)[:n]
        if cm is not None:
            self.cm.mat += cm.mat
            self.cm.invalid_predictions += cm.invalid_predictions
            self.num_labelled += 1
        if box_counts is not None:
            self.box_scores.add_counts(box_counts)
        for k, v in (getattr(result, "timings", None) or {}).items():
            self._timings[k].append(float(v))
        self._keep_sample(name, cond, ir8, vis_bgr, result, mask, boxes)
        self.num_images += 1
        if self.keep_per_image:
            self.per_image.append(record)
        return record

    def _score(self, name: str, ir: np.ndarray, vis_bgr: np.ndarray, result: ResultLike,
               label: np.ndarray | None, boxes: Sequence[Box] | None = None) -> tuple:
        """Everything add() needs, computed without touching the accumulators (may raise ValueError)."""
        vis_bgr = vis_bgr if vis_bgr.ndim == 3 else cv2.cvtColor(vis_bgr, cv2.COLOR_GRAY2BGR)
        ir8 = ir_to_uint8(ir)
        if ir8.shape != vis_bgr.shape[:2]:  # engine output lives at the RGB resolution
            self._warn("ir_resized_to_vis", f"{name}: IR {ir8.shape} resized to the VIS size {vis_bgr.shape[:2]}")
            ir8 = cv2.resize(ir8, (vis_bgr.shape[1], vis_bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
        vis_y = to_gray(vis_bgr)
        fused_y = to_gray(np.asarray(result.fused_bgr))
        mask = np.asarray(result.mask)
        if fused_y.shape != vis_y.shape or mask.shape != vis_y.shape:
            raise ValueError(f"engine output (fused {fused_y.shape}, mask {mask.shape}) is not at the visible "
                             f"resolution {vis_y.shape}")
        cond = condition_of(name)
        record: dict[str, Any] = {"name": name, "condition": cond}
        fusions = {"model": fused_y}
        if self.baselines and self.metrics:
            fusions.update(baseline_fusions(ir8, vis_y))
        for method, fused in fusions.items():
            record[method] = fusion_metrics(ir8, vis_y, fused, self.metrics)
        cm = self._frame_cm(mask, label) if label is not None else None
        if label is not None:
            if cm is None:
                self._warn("label_shape_mismatch", f"{name}: label {label.shape[:2]} does not match mask "
                                                   f"{mask.shape}; not scored")
            else:
                record["miou"] = cm.miou()
                if self.label_mode.kind == "binary":
                    record[f"iou_{self.label_mode.class_name}"] = float(cm.iou()[1])
        box_counts = None
        if boxes is not None and self.box_scores is not None:
            box_counts = self.box_scores.frame_counts(mask, boxes)
            record["num_boxes"] = len(boxes)
        return record, cm, ir8, vis_bgr, mask, box_counts, boxes

    def _frame_cm(self, mask: np.ndarray, label: np.ndarray) -> ConfusionMatrix | None:
        """One frame's confusion matrix in the evaluator's label mode; None if label and mask sizes differ."""
        label = label if label.ndim == 2 else label[..., 0]
        if label.shape != mask.shape:
            return None
        pred, gt = binary_masks(mask, label, self.label_mode.class_id) if self.label_mode.kind == "binary" \
            else (mask, label)
        cm = ConfusionMatrix(self.cm.num_classes, ignore_index=self.cm.ignore_index)
        cm.update(pred, gt)
        return cm

    def add_teacher(self, mask: np.ndarray, label: np.ndarray) -> None:
        """Score a baseline segmenter's mask (the MFNet teacher) against the same label, in the same mode."""
        cm = self._frame_cm(mask, label)
        if cm is None:
            return  # add() counts the mismatch once for the frame
        if self.teacher_cm is None:
            self.teacher_cm = ConfusionMatrix(self.cm.num_classes, ignore_index=self.cm.ignore_index)
        self.teacher_cm.mat += cm.mat

    def _keep_sample(self, name: str, cond: str | None, ir8: np.ndarray, vis_bgr: np.ndarray,
                     result: ResultLike, mask: np.ndarray, boxes: Sequence[Box] | None = None) -> None:
        """First num_samples frames of each condition (day / night / other): bounded, and the grid can mix them."""
        if len(self._samples[cond]) >= self.num_samples:
            return
        overlay = result.overlay if getattr(result, "overlay", None) is not None else \
            make_overlay(vis_bgr, mask, self.palette)
        w = self.thumb_width
        thumb = _thumb(overlay, w)
        if boxes:
            thumb = draw_boxes(thumb, boxes, self.palette, scale=thumb.shape[1] / overlay.shape[1])
        self._samples[cond].append(Sample(name, _thumb(ir8, w), _thumb(vis_bgr, w), _thumb(result.fused_bgr, w),
                                          thumb))

    def samples(self) -> list[Sample]:
        """Up to num_samples thumbnails, taken in turn from each condition (day, night, other)."""
        groups = [self._samples[k] for k in ("day", "night", None) if self._samples.get(k)]
        out: list[Sample] = []
        i = 0
        while len(out) < self.num_samples and any(i < len(g) for g in groups):
            out += [g[i] for g in groups if i < len(g)]
            i += 1
        return out[:self.num_samples]

    def _means(self, key: str | None) -> dict[str, dict[str, float]]:
        n = self._counts[key]
        methods = ["model"] + (["max", "mean"] if self.baselines else [])
        return {m: {k: self._sums[(key, m)][k] / n for k in self.metrics} for m in methods}

    def report(self) -> dict[str, Any]:
        """The report dict (what finish() writes as report.json)."""
        rep: dict[str, Any] = {"num_images": self.num_images, "metrics_direction": "higher is better (all)"}
        if self.num_images and self.metrics:
            rep["fusion"] = self._means(None)
            conds = {c: {"num_images": self._counts[c], "fusion": self._means(c)}
                     for c in ("day", "night") if self._counts.get(c)}
            if conds:
                rep["fusion_by_condition"] = conds
        if self.num_images:
            total = self._pred_pixels.sum()
            rep["predicted_class_fraction"] = {n: float(c / total) for n, c in zip(self.class_names,
                                                                                  self._pred_pixels)}
        if self.num_labelled:
            seg = {"label_mode": str(self.label_mode), "num_labelled": self.num_labelled, "ignore_index":
                   self.cm.ignore_index, **self.cm.to_dict(self.seg_names)}
            if self.label_mode.kind == "binary":
                name = self.label_mode.class_name
                seg["headline"] = {"name": f"{name} IoU", "value": seg["iou"][name]}
            if self.cm.invalid_predictions:
                self.warnings["invalid_predicted_ids"] = self.cm.invalid_predictions
            rep["segmentation"] = seg
            if self.teacher_cm is not None and self.teacher_cm.mat.sum():
                rep["segmentation_teacher"] = {"label_mode": str(self.label_mode),
                                               **self.teacher_cm.to_dict(self.seg_names)}
        if self.box_scores is not None and self.box_scores.num_images:
            rep["boxes"] = {**self.box_info, **self.box_scores.to_dict()}
        if self._timings:
            rep["timings_ms"] = {k: _stats(v) for k, v in self._timings.items()}
        rep["warnings"] = dict(self.warnings)
        rep["skipped"] = list(self.skipped)
        if self.keep_per_image:
            rep["per_image"] = self.per_image
        return rep

    def finish(self, out_dir: str | Path, extra: dict | None = None) -> dict[str, Any]:
        """Write report.json, report.md, iou.png (when labelled) and samples.png; return the report dict.

        `extra` goes under "run" (checkpoint, device, data folders...) and into the markdown header.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rep = {"run": dict(extra or {}), **self.report()}
        write_json(out / "report.json", rep)
        (out / "report.md").write_text(markdown_report(rep))
        files = ["report.json", "report.md"]
        if "segmentation" in rep:
            seg = rep["segmentation"]
            plot_iou(out / "iou.png", seg, f"IoU ({seg['label_mode']}, {seg['num_labelled']} images)")
            files.append("iou.png")
        if self.num_images:
            plot_samples(out / "samples.png", self.samples())
            files.append("samples.png")
        rep["files"] = files
        return rep


# ---------------------------------------------------------------------------- CLI

EXAMPLES = """examples:
  mafs eval --ir data/msrs/ir --vis data/msrs/vi --out eval_msrs --baselines
  mafs eval --ir masks/ir --vis masks/vi --labels masks/label --label-mode binary:person --out eval_person
  mafs eval --ir DIR --vis DIR --out smoke --random-init mafs_t --limit 5
"""


def register(subparsers: argparse._SubParsersAction, registry: dict) -> None:
    p = subparsers.add_parser("eval", help="fusion metrics, IoU and sample grid over paired IR/VIS folders",
                              description=__doc__, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ir", required=True, type=Path, help="folder of thermal images")
    p.add_argument("--vis", required=True, type=Path, help="folder of visible images (same file stems)")
    p.add_argument("--labels", type=Path, help="folder of label images (same stems); enables IoU")
    p.add_argument("--label-mode", default="multiclass",
                   help="'multiclass' (class ids, 255 ignored) or 'binary:CLASSNAME' for 0/255 one-class masks "
                        "(e.g. binary:person for msrs_person_masks)")
    p.add_argument("--out", required=True, type=Path, help="output folder for report.json/.md and PNGs")
    p.add_argument("--checkpoint", type=Path, help="MAFS checkpoint or .onnx (default: shipped weights)")
    p.add_argument("--random-init", metavar="VARIANT",
                   help="evaluate a seeded random-init network (e.g. mafs_t) instead of weights: smoke runs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", help="auto, fp32, fp16, bf16")
    p.add_argument("--warmup", type=int, help="engine warm-up passes before timing (default: the engine's)")
    add_tta_args(p)
    p.add_argument("--limit", type=int, help="evaluate only the first N pairs")
    p.add_argument("--baselines", action="store_true", help="also score pixel-max and mean fusion")
    p.add_argument("--baseline-teacher", nargs="?", const="default", metavar="PTH",
                   help="also score the MFNet teacher's segmentation on the same frames (needs --labels; default "
                        "$MAFS_DATA_ROOT or ../shared/data, then teachers/mfnet/mfnet_final.pth)")
    p.add_argument("--boxes", type=Path, metavar="DIR",
                   help="box labels (YOLO .txt folder, VOC .xml folder or one COCO .json): adds box scores of the "
                        "mask to the report (docs/metrics.md, 'Box labels') and draws the boxes on samples.png")
    p.add_argument("--box-format", default="auto", choices=("auto", *BOX_FORMATS),
                   help="format of --boxes (default: auto, from the files)")
    p.add_argument("--box-classes", metavar="MAP",
                   help="file class -> model class, e.g. 0:person,1:bike,2:car (MSRS; needed for YOLO); "
                        "COCO/VOC default to matching category names, NAME:- drops a class")
    p.add_argument("--samples", type=int, default=6, help="rows in samples.png")
    p.add_argument("--save-fused", action="store_true",
                   help="also write OUT/fused/NAME.png (fused BGR) and OUT/mask/NAME.png (class ids)")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mafs_core.engine import FusionSegmenter
    from mafs_core.io import list_pairs, read_ir, read_label, read_vis

    pairs = list_pairs(args.ir, args.vis, args.labels)
    if args.limit is not None:
        pairs = pairs[:max(0, args.limit)]
    if not pairs:
        print(f"error: no image pairs with matching names in {args.ir} and {args.vis}")
        return 2
    overrides = {"warmup": args.warmup} if args.warmup is not None else {}
    overrides.update(tta_overrides(args))
    try:
        if args.random_init:
            engine = FusionSegmenter.from_variant(args.random_init, device=args.device, precision=args.precision,
                                                  **overrides)
        else:
            engine = FusionSegmenter.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision,
                                                     **overrides)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # missing weights, bad checkpoint or device
        print(f"error: {exc}")
        return 2
    try:
        mode = parse_label_mode(args.label_mode, engine.class_names)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    box_source = None
    if args.boxes is not None:
        try:
            box_source = BoxSource(args.boxes, engine.class_names, args.box_format, args.box_classes)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}")
            return 2
    ev = Evaluator(engine.class_names, engine.palette, label_mode=mode, baselines=args.baselines,
                   num_samples=args.samples, box_classes=box_source.classes if box_source else None,
                   box_info={"dir": str(args.boxes), "format": box_source.format,
                             "class_map": args.box_classes} if box_source else None)
    teacher = None
    if args.baseline_teacher:
        try:
            teacher = _load_teacher(args.baseline_teacher, engine)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}")
            return 2
    if args.labels is not None:
        missing = sum(p.label is None for p in pairs)
        if missing:
            ev.warnings["pairs_without_label"] = missing
    for pair in tqdm(pairs, desc="eval", unit="img"):
        try:
            ir, vis = read_ir(pair.ir), read_vis(pair.vis)
            label = read_label(pair.label) if pair.label is not None else None
            boxes = box_source.boxes(pair.name, vis.shape[:2]) if box_source is not None else None
        except ValueError as exc:  # includes BoxFormatError: a broken box file skips its frame, named
            ev.skip(pair.name, str(exc))
            continue
        if box_source is not None and boxes is None:
            ev.warnings["pairs_without_boxes"] += 1
        result = engine.run(ir, vis, rgb_encoding="bgr8", want_color=False, want_overlay=True)
        ev.add(pair.name, ir, vis, result, label, boxes)
        if teacher is not None and label is not None:
            ev.add_teacher(teacher.mask(ir, vis), label)
        if args.save_fused:
            for sub, img in (("fused", result.fused_bgr), ("mask", result.mask)):
                (args.out / sub).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(args.out / sub / f"{pair.name}.png"), img)
    run = {"ir_dir": str(args.ir), "vis_dir": str(args.vis),
           "labels_dir": str(args.labels) if args.labels else None, "label_mode": str(mode),
           "boxes_dir": str(args.boxes) if args.boxes else None,
           "checkpoint": f"random-init {args.random_init}" if args.random_init else str(args.checkpoint or "default"),
           "model": engine.describe(), "variant": engine.variant, "device": str(engine.device),
           "precision": str(engine.precision)}
    rep = ev.finish(args.out, run)
    engine.release()
    _print_summary(rep, args.out)
    return 0


def _load_teacher(spec: str, engine: Any) -> Any:
    """The MFNet teacher for --baseline-teacher; only for models with its 9 MSRS classes."""
    import os

    from mafs_core.teacher import DEFAULT_TEACHER, MFNET_NUM_CLASSES, TeacherSegmenter

    if engine.num_classes != MFNET_NUM_CLASSES:
        raise ValueError(f"--baseline-teacher compares against MFNet's {MFNET_NUM_CLASSES} MSRS classes; "
                         f"this model has {engine.num_classes}")
    if spec == "default":
        root = Path(os.environ.get("MAFS_DATA_ROOT") or Path(__file__).resolve().parent.parent.parent / "shared"
                    / "data")
        spec = str(root / DEFAULT_TEACHER)
    mode = (engine.metadata.get("thermal_norm") or {}).get("mode", "minmax")
    return TeacherSegmenter.load(spec, device=engine.device, thermal_norm=mode)


def _print_summary(rep: dict, out: Path) -> None:
    print(f"evaluated {rep['num_images']} images -> {out}/ ({', '.join(rep['files'])})")
    for method, m in rep.get("fusion", {}).items():
        print(f"  {method:6s} " + "  ".join(f"{k}={v:.3f}" for k, v in m.items()))
    seg = rep.get("segmentation")
    if seg:
        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        head = f"{seg['headline']['name']}={f(seg['headline']['value'])}  " if seg.get("headline") else ""
        print(f"  segmentation ({seg['label_mode']}): {head}mIoU={f(seg['miou'])}  acc={f(seg['pixel_accuracy'])}")
        t = rep.get("segmentation_teacher")
        if t:
            print(f"  teacher (same frames): mIoU={f(t['miou'])}  acc={f(t['pixel_accuracy'])}")
            print("  " + "  ".join(f"{n}={f(seg['iou'][n])}/{f(t['iou'][n])}" for n in seg["class_names"])
                  + "   (model/teacher IoU)")
    box = rep.get("boxes")
    if box:
        m = box["mean"]
        print(f"  boxes ({box['num_images']} images, mean over classes): "
              + "  ".join(f"{k}={'n/a' if m[k] is None else f'{m[k]:.4f}'}" for k in m))
