"""`mafs bag make|eval|export`: rosbag2 files in and out of MAFS, offline and faster than real time.

`make` turns a folder of IR/VIS pairs into a bag with camera-like timing, `eval` replays a bag through
the same pairer and engine the node uses and reports metrics, `export` writes paired frames as a
training folder. `mafs bag play` (rclpy) is added by mafs_ros.bag_play under the same `bag` parser.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mafs_core.bagio import MANIFEST_KEY, BagError, BagReader, BagWriter, Frame, to_bgr8
from mafs_core.io import IMAGE_EXTS, list_pairs, read_ir, read_label, read_vis
from mafs_core.tta import add_tta_args, tta_overrides

THERMAL_TOPIC, RGB_TOPIC, LABEL_TOPIC = "/thermal/image_raw", "/rgb/image_raw", "/labels/image"
THERMAL_FRAME, RGB_FRAME = "thermal_camera", "rgb_camera"
OUTPUT_TOPICS = {
    "fused": "/mafs/fused/image",
    "mask": "/mafs/segmentation/mask",
    "color": "/mafs/segmentation/color",
    "overlay": "/mafs/segmentation/overlay",
}
T0_NS = 1_700_000_000_000_000_000  # a plausible wall-clock epoch for generated bags (2023-11-14)


# ---------------------------------------------------------------- make


@dataclass
class MakeConfig:
    rate: float = 30.0
    jitter_ms: float = 3.0
    thermal_offset_ms: float = 15.0
    limit: int | None = None
    loop: int = 1
    storage: str = "mcap"
    seed: int = 0
    start_ns: int = T0_NS


def make_bag(ir_dir: str | Path, vis_dir: str | Path, out: str | Path, label_dir: str | Path | None = None,
             cfg: MakeConfig | None = None, names: Sequence[str] | None = None) -> dict:
    """Write a rosbag2 of the pairs in the folders with camera-like timing; return a summary.

    RGB stamps tick at 1/rate with Gaussian jitter, thermal stamps trail by the offset plus their own
    jitter (as two free-running cameras do), log time = stamp. Messages are written in log-time order.
    """
    cfg = cfg or MakeConfig()
    pairs = list_pairs(ir_dir, vis_dir, label_dir)
    if names is not None:
        wanted = set(names)
        pairs = [p for p in pairs if p.name in wanted]
    if cfg.limit is not None:
        pairs = pairs[: cfg.limit]
    if not pairs:
        raise BagError(f"no IR/VIS pairs with matching names in {ir_dir} and {vis_dir}")
    missing = [p.name for p in pairs if label_dir is not None and p.label is None]
    if missing:
        raise BagError(f"no label in {label_dir} for {len(missing)} pair(s): {missing[:5]}")
    has_labels = label_dir is not None
    order = [j for _ in range(max(1, cfg.loop)) for j in range(len(pairs))]  # frame -> pair index
    frames = [pairs[j] for j in order]
    rng = np.random.default_rng(cfg.seed)
    period = 1e9 / cfg.rate
    jitter = cfg.jitter_ms * 1e6
    # Clip jitter to a third of the period so stamps stay strictly increasing per camera.
    rgb_ns = [int(cfg.start_ns + i * period + np.clip(rng.normal(0, jitter), -period / 3, period / 3))
              for i in range(len(frames))]
    th_ns = [int(t + cfg.thermal_offset_ms * 1e6 + np.clip(rng.normal(0, jitter), -period / 3, period / 3))
             for t in rgb_ns]
    events = sorted([(t, 0, i) for i, t in enumerate(rgb_ns)] + [(t, 1, i) for i, t in enumerate(th_ns)])

    cache: dict[tuple[int, int], np.ndarray] = {}

    def load(kind: int, i: int) -> np.ndarray:
        key = (kind, order[i])
        if key not in cache:
            if len(cache) > 64:  # thermal trails rgb by a frame or two: a small window is enough
                cache.pop(next(iter(cache)))
            cache[key] = read_vis(frames[i].vis) if kind == 0 else read_ir(frames[i].ir)
        return cache[key]

    with BagWriter(out, storage=cfg.storage) as w:
        w.set_custom_data(MANIFEST_KEY, json.dumps({str(t): frames[i].name for i, t in enumerate(rgb_ns)}))
        for t, kind, i in events:
            if kind == 0:
                w.write_image(RGB_TOPIC, load(0, i), "bgr8", t, RGB_FRAME)
                if has_labels:
                    w.write_image(LABEL_TOPIC, read_label(frames[i].label), "mono8", t, RGB_FRAME)
            else:
                ir = load(1, i)
                w.write_image(THERMAL_TOPIC, ir, "mono16" if ir.dtype == np.uint16 else "mono8", t, THERMAL_FRAME)
    return {"bag": str(out), "frames": len(frames), "pairs": len(pairs), "labels": has_labels,
            "duration_s": (max(th_ns[-1], rgb_ns[-1]) - rgb_ns[0]) * 1e-9, "storage": cfg.storage}


def _cmd_make(args: argparse.Namespace) -> int:
    cfg = MakeConfig(rate=args.rate, jitter_ms=args.jitter_ms, thermal_offset_ms=args.thermal_offset_ms,
                     limit=args.limit, loop=args.loop, storage=args.storage, seed=args.seed)
    try:
        info = make_bag(args.ir, args.vis, args.out, args.labels, cfg)
    except (BagError, FileNotFoundError) as exc:
        print(f"mafs bag make: error: {exc}")
        return 2
    print(f"wrote {info['bag']} ({info['storage']}): {info['frames']} frame pairs over {info['duration_s']:.2f} s"
          f"{' with labels' if info['labels'] else ''}; topics {THERMAL_TOPIC}, {RGB_TOPIC}"
          f"{', ' + LABEL_TOPIC if info['labels'] else ''}")
    return 0


# ---------------------------------------------------------------- pairing a bag


@dataclass
class PairedFrame:
    """A thermal/RGB pair as the node would see it, with its label (exact RGB stamp) when there is one."""

    index: int
    thermal: Frame
    rgb: Frame
    label: np.ndarray | None = None
    name: str | None = None  # source file name, from the manifest of a bag made by `mafs bag make`


@dataclass
class PairingOptions:
    slop: float | None = None  # seconds; None = the pairer's (and node's) default
    thermal_offset: float = 0.0  # seconds added to thermal stamps before pairing (the node's thermal_offset)
    queue_size: int | None = None
    label_wait: float = 1.0  # seconds of log time a pair waits for its label message before going on without


@dataclass
class PairingStats:
    messages: dict[str, int] = field(default_factory=dict)
    pairer: dict = field(default_factory=dict)
    labels_matched: int = 0
    labels_missing: int = 0

    def to_dict(self) -> dict:
        return {"messages": self.messages, **self.pairer,
                "labels_matched": self.labels_matched, "labels_missing": self.labels_missing}


def _new_pairer(opts: PairingOptions):
    from mafs_core.pairing import ApproxTimePairer

    kwargs: dict = {"offsets": (opts.thermal_offset, 0.0)}
    if opts.slop is not None:
        kwargs["slop"] = opts.slop
    if opts.queue_size is not None:
        kwargs["queue_size"] = opts.queue_size
    return ApproxTimePairer(**kwargs)


def iter_pairs(reader: BagReader, thermal_topic: str, rgb_topic: str, label_topic: str | None = None,
               opts: PairingOptions | None = None, stats: PairingStats | None = None) -> Iterator[PairedFrame]:
    """Pairs in the order the node would emit them, streaming (memory bounded by queue and label wait).

    Uses the node's own `ApproxTimePairer` on the messages in log-time order, so offline results are
    the live ones. Labels are matched to the RGB frame with exactly the same header stamp.
    """
    opts = opts or PairingOptions()
    stats = stats if stats is not None else PairingStats()
    topics = [thermal_topic, rgb_topic] + ([label_topic] if label_topic else [])
    reader.check_topics(topics)
    manifest = reader.manifest()
    pairer = _new_pairer(opts)
    labels: dict[int, np.ndarray] = {}
    pending: list[tuple[Frame, Frame]] = []
    index = 0

    def emit(th: Frame, rgb: Frame) -> PairedFrame:
        nonlocal index
        label = labels.pop(rgb.stamp_ns, None) if label_topic else None
        if label_topic:
            if label is None:
                stats.labels_missing += 1
            else:
                stats.labels_matched += 1
        pf = PairedFrame(index, th, rgb, label, manifest.get(rgb.stamp_ns))
        index += 1
        return pf

    try:
        for fr in reader.frames(topics):
            stats.messages[fr.topic] = stats.messages.get(fr.topic, 0) + 1
            if fr.topic == label_topic:
                labels[fr.stamp_ns] = fr.image if fr.image.ndim == 2 else fr.image[..., 0]
            else:
                match = pairer.add(0 if fr.topic == thermal_topic else 1, fr.stamp, fr)
                if match is not None:
                    pending.append(match.items)
            # A pair leaves once its label is in, or once the log has moved well past it.
            while pending and (not label_topic or pending[0][1].stamp_ns in labels
                               or fr.log_ns - pending[0][1].log_ns > opts.label_wait * 1e9):
                yield emit(*pending.pop(0))
            if len(labels) > 1000:  # labels with no RGB frame: keep memory bounded
                labels.pop(next(iter(labels)))
        while pending:
            yield emit(*pending.pop(0))
    finally:
        stats.pairer = pairer.summary()


# ---------------------------------------------------------------- export


def frame_boxes(source, pf: PairedFrame, shape: tuple[int, int]) -> list | None:
    """A paired frame's boxes from a BoxSource, joined by name: the bag's source name (the manifest of
    `mafs bag make`), the export name (<index>_<rgb stamp ns>), or the RGB stamp in ns; None if none has a file."""
    for key in (pf.name, f"{pf.index:06d}_{pf.rgb.stamp_ns}", str(pf.rgb.stamp_ns)):
        if key:
            boxes = source.boxes(key, shape)
            if boxes is not None:
                return boxes
    return None


def _box_source(boxes: str | Path, box_format: str, box_classes: str | None, class_names: Sequence[str]):
    from mafs_core.boxes import BoxSource

    return BoxSource(boxes, class_names, box_format, box_classes)


def export_bag(bag: str | Path, out: str | Path, thermal_topic: str = THERMAL_TOPIC, rgb_topic: str = RGB_TOPIC,
               label_topic: str | None = None, opts: PairingOptions | None = None, progress: bool = True,
               boxes: str | Path | None = None, box_format: str = "auto", box_classes: str | None = None,
               num_classes: int = 9) -> dict:
    """Paired frames as a training folder: ir/, vi/, label/ PNGs named <index>_<rgb stamp ns> + manifest.json.

    `boxes` (YOLO/VOC folder or COCO json, see frame_boxes for the join) adds boxes/<name>.txt in YOLO form
    with the same class map, so the folder trains with `boxes: DIR/boxes` and that `box_classes`."""
    from tqdm import tqdm

    from mafs_core.boxes import write_yolo
    from mafs_core.classes import default_class_names

    out = Path(out)
    stats = PairingStats()
    rows: list[dict] = []
    error = None
    src = _box_source(boxes, box_format, box_classes, default_class_names(num_classes)) if boxes else None
    write_map: dict = {}
    if src is not None:
        names = src.class_names
        # YOLO files keep their ids; boxes matched by name (COCO, VOC) are numbered by their model class ids
        write_map = src.class_map or {str(c): c for c in src.classes}
        box_classes = ",".join(f"{k}:{names[v]}" for k, v in write_map.items() if v is not None)
        (out / "boxes").mkdir(parents=True, exist_ok=True)
    box_errors: list[str] = []
    with BagReader(bag) as reader:
        if label_topic is None and LABEL_TOPIC in reader.topics:
            label_topic = LABEL_TOPIC
        reader.check_topics([thermal_topic, rgb_topic] + ([label_topic] if label_topic else []))
        for sub in ("ir", "vi") + (("label",) if label_topic else ()):
            (out / sub).mkdir(parents=True, exist_ok=True)
        total = reader.message_counts.get(rgb_topic)
        try:
            for pf in tqdm(iter_pairs(reader, thermal_topic, rgb_topic, label_topic, opts, stats), total=total,
                           desc="export", unit="pair", disable=not progress):
                name = f"{pf.index:06d}_{pf.rgb.stamp_ns}"
                ir = pf.thermal.image if pf.thermal.image.ndim == 2 else cv2.cvtColor(
                    np.ascontiguousarray(pf.thermal.image[..., :3]), cv2.COLOR_BGR2GRAY)
                cv2.imwrite(str(out / "ir" / f"{name}.png"), ir)
                cv2.imwrite(str(out / "vi" / f"{name}.png"), _bgr8(pf.rgb))
                if pf.label is not None:
                    cv2.imwrite(str(out / "label" / f"{name}.png"), pf.label)
                n_boxes = None
                if src is not None:
                    shape = pf.rgb.image.shape[:2]
                    try:
                        fb = frame_boxes(src, pf, shape)
                    except ValueError as exc:  # a malformed box file: the frame is kept, the file named
                        box_errors.append(str(exc))
                        fb = None
                    if fb is not None:
                        write_yolo(out / "boxes" / f"{name}.txt", fb, shape, write_map)
                        n_boxes = len(fb)
                rows.append({"name": name, "index": pf.index, "thermal_stamp_ns": pf.thermal.stamp_ns,
                             "rgb_stamp_ns": pf.rgb.stamp_ns, "source": pf.name, "label": pf.label is not None,
                             **({"boxes": n_boxes} if src is not None else {})})
        except BagError as exc:
            error = str(exc)
    manifest = {"bag": str(bag), "thermal_topic": thermal_topic, "rgb_topic": rgb_topic, "label_topic": label_topic,
                "pairs": len(rows), "pairing": stats.to_dict(), "frames": rows}
    if src is not None:
        manifest["boxes"] = {"source": str(boxes), "dir": "boxes", "format": "yolo", "box_classes": box_classes,
                             "frames_with_boxes": sum(r["boxes"] is not None for r in rows), "errors": box_errors}
    if error:
        manifest["error"] = error
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _bgr8(fr: Frame) -> np.ndarray:
    return to_bgr8(fr.image, fr.encoding)


# ---------------------------------------------------------------- eval


@dataclass
class EvalOptions:
    checkpoint: str | None = None  # None = the shipped default weights
    device: str = "auto"
    batch_size: int = 1
    random_init: str | None = None  # a variant name: seeded untrained network (smoke runs, benchmarks)
    label_mode: str = "multiclass"  # or binary:CLASSNAME for 0/255 one-class masks (as `mafs eval`)
    metrics: Sequence[str] | None = None  # fusion metrics to compute (None = all; () = none, for speed runs)
    write_bag: bool = False
    storage: str = "mcap"
    limit: int | None = None
    progress: bool = True
    workers: int = 0  # threads scoring frames in parallel (0 = one per CPU core, up to 16)
    boxes: str | None = None  # box labels joined to the paired frames (frame_boxes): box scores in the report
    box_format: str = "auto"
    box_classes: str | None = None
    tta_scales: Sequence[float] = (1.0,)  # test-time augmentation of the mask (mafs_core.tta)
    tta_flip: bool = False


class _StageTimer:
    """Wall time per stage (ms per frame), for the report's throughput breakdown."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}

    def add(self, stage: str, seconds: float, frames: int = 1) -> None:
        self.ms.setdefault(stage, []).extend([seconds * 1e3 / max(frames, 1)] * max(frames, 1))

    def summary(self) -> dict[str, dict[str, float]]:
        return {k: {"mean": float(np.mean(v)), "median": float(np.median(v)), "p99": float(np.percentile(v, 99)),
                    "total_s": float(np.sum(v)) / 1e3} for k, v in self.ms.items() if v}


def _engine_inputs(pf: PairedFrame) -> tuple[np.ndarray, np.ndarray, str]:
    """Thermal HxW and visible image in an encoding the engine takes (bgr8/rgb8/mono8)."""
    th = pf.thermal.image
    if th.ndim == 3:  # a colour-mapped thermal stream: its luminance
        th = cv2.cvtColor(to_bgr8(th, pf.thermal.encoding), cv2.COLOR_BGR2GRAY)
    enc = pf.rgb.encoding if pf.rgb.encoding in ("bgr8", "rgb8", "mono8") else "bgr8"
    vis = pf.rgb.image if enc == pf.rgb.encoding else to_bgr8(pf.rgb.image, pf.rgb.encoding)
    return th, vis, enc


def _batched(it: Iterator[PairedFrame], n: int, timer: _StageTimer) -> Iterator[list[PairedFrame]]:
    batch: list[PairedFrame] = []
    while True:
        t = time.perf_counter()
        pf = next(it, None)
        timer.add("read_pair", time.perf_counter() - t)
        if pf is None:
            break
        batch.append(pf)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def _labels_from_dir(label_dir: str | Path, manifest: dict[int, str]) -> Callable[[PairedFrame], np.ndarray | None]:
    """Label lookup for `--labels DIR`: by source name (bag manifest) when the bag has one, else by pair order."""
    files = {p.stem: p for p in sorted(Path(label_dir).iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    if not files:
        raise BagError(f"no label images in {label_dir}")
    ordered = list(files.values())

    def lookup(pf: PairedFrame) -> np.ndarray | None:
        if manifest:
            path = files.get(pf.name) if pf.name else None
        else:
            path = ordered[pf.index] if pf.index < len(ordered) else None
        return read_label(path) if path is not None else None

    return lookup


def _output_messages(w: BagWriter, pf: PairedFrame, res) -> None:
    """The node's four outputs, stamped and framed like the RGB input (what rviz/Foxglove need)."""
    st, fid, log = pf.rgb.stamp_ns, pf.rgb.frame_id, pf.rgb.log_ns
    w.write_image(OUTPUT_TOPICS["fused"], res.fused_bgr, "bgr8", st, fid, log)
    w.write_image(OUTPUT_TOPICS["mask"], res.mask, "mono8", st, fid, log)
    if res.color is not None:
        w.write_image(OUTPUT_TOPICS["color"], res.color, "rgb8", st, fid, log)
    if res.overlay is not None:
        w.write_image(OUTPUT_TOPICS["overlay"], res.overlay, "bgr8", st, fid, log)


def load_engine(opts: EvalOptions):
    """The engine `bag eval` runs: a checkpoint (default: shipped weights) or a seeded random-init variant."""
    from mafs_core.engine import FusionSegmenter

    tta = {"tta_scales": tuple(opts.tta_scales), "tta_flip": opts.tta_flip}
    if opts.random_init:
        return FusionSegmenter.from_variant(opts.random_init, device=opts.device, **tta)
    return FusionSegmenter.from_checkpoint(opts.checkpoint, device=opts.device, **tta)


def _bag_markdown(report: dict) -> str:
    """The bag-specific part of report.md: pairing, throughput and per-stage timings."""
    pr, tp = report["pairing"], report["throughput"]
    out = ["## Bag replay", "",
           f"**{tp['frames']} pairs in {tp['wall_s']:.2f} s = {tp['fps']:.2f} frames/s** "
           f"(model load {tp['model_load_s']:.2f} s, not counted"
           + (f"; after the first batch, which took {tp['first_batch_s']:.2f} s: {tp['steady_fps']:.2f} frames/s"
              if "steady_fps" in tp else "") + ")", "",
           "| pairing | value |", "|---|---|",
           f"| messages read | {pr.get('messages')} |",
           f"| matched pairs | {pr.get('matched')} |",
           f"| unmatched (thermal, rgb) | {pr.get('unmatched')} |",
           f"| left queued at end (thermal, rgb) | {pr.get('pending')} |",
           f"| labels matched / missing | {pr.get('labels_matched')} / {pr.get('labels_missing')} |"]
    d = pr.get("stamp_diff") or {}
    if d.get("count"):
        out.append(f"| stamp difference thermal-rgb (ms, after offset) | mean {d['mean'] * 1e3:.2f}, "
                   f"std {d['std'] * 1e3:.2f}, |max| {d['abs_max'] * 1e3:.2f} |")
    out += ["", "`metrics` and `write_bag` run on a sink thread while the next batch is read and run, so the stages "
            "overlap and their times need not add up to the wall time.",
            "", "| stage (ms per frame) | mean | median | p99 |", "|---|---:|---:|---:|"]
    out += [f"| {k} | {t['mean']:.2f} | {t['median']:.2f} | {t['p99']:.2f} |"
            for k, t in report["stage_timings_ms"].items()]
    if report.get("output_bag"):
        out += ["", f"Output bag: `{report['output_bag']}` (topics {', '.join(OUTPUT_TOPICS.values())}, "
                "stamped like the RGB input)"]
    if report.get("error"):
        out += ["", f"**Stopped early: {report['error']}** (results above cover the frames before the fault)"]
    return "\n".join(out) + "\n"


def evaluate_bag(bag: str | Path, out: str | Path, thermal_topic: str = THERMAL_TOPIC, rgb_topic: str = RGB_TOPIC,
                 label_topic: str | None = None, label_dir: str | Path | None = None,
                 pairing: PairingOptions | None = None, opts: EvalOptions | None = None, engine=None) -> dict:
    """Replay a bag offline through the node's pairer and the engine; write report.json/.md (+ output bag).

    Metrics come from the same `Evaluator` as `mafs eval`. A fault in the bag midway (truncation, bad
    encoding) stops the run but keeps what was computed: the report gets an `error` field and the
    output bag is closed cleanly. Faults found before any frame (missing topic...) raise BagError.
    """
    from tqdm import tqdm

    from mafs_core.evaluate import Evaluator
    from mafs_core.report import markdown_report, write_json

    opts = opts or EvalOptions()
    pairing = pairing or PairingOptions()
    out = Path(out)
    timer, stats = _StageTimer(), PairingStats()
    with BagReader(bag) as reader:  # fail fast, before loading a model
        reader.check_topics([thermal_topic, rgb_topic] + ([label_topic] if label_topic else []))
        label_of = _labels_from_dir(label_dir, reader.manifest()) if label_dir else None
        total = reader.message_counts.get(rgb_topic)
    t_load = time.perf_counter()
    engine = engine if engine is not None else load_engine(opts)
    load_s = time.perf_counter() - t_load
    src = _box_source(opts.boxes, opts.box_format, opts.box_classes, engine.class_names) if opts.boxes else None
    evaluator = Evaluator(engine.class_names, engine.palette, label_mode=opts.label_mode,
                          box_classes=src.classes if src is not None else None,
                          box_info={"dir": str(opts.boxes), "format": src.format, "class_map": opts.box_classes}
                          if src is not None else None,
                          **({} if opts.metrics is None else {"metrics": opts.metrics}))

    def boxes_of(pf: PairedFrame, shape: tuple[int, int]) -> list | None:
        if src is None:
            return None
        try:
            fb = frame_boxes(src, pf, shape)
        except ValueError as exc:  # a malformed box file: scored without boxes, the file named in the report
            evaluator.warnings[f"box_file_error: {exc}"] += 1
            return None
        if fb is None:
            evaluator.warnings["pairs_without_boxes"] += 1
        return fb
    out.mkdir(parents=True, exist_ok=True)
    error: str | None = None
    frames = 0
    first: tuple[int, float] | None = None  # (frames, seconds) when the first batch was done: one-off costs
    if opts.limit:
        total = min(total or opts.limit, opts.limit)
    bar = tqdm(total=total, desc="bag eval", unit="pair", disable=not opts.progress)
    workers = opts.workers or min(16, os.cpu_count() or 1)
    scorers = ThreadPoolExecutor(workers, thread_name_prefix="bag-eval-score") if workers > 1 else None
    # Scoring and bag writing run on one sink thread while the main thread reads and runs the next batch:
    # on a GPU they, not the network, set the pace. At most two batches wait, so memory stays bounded.
    # The output bag lives on the sink thread from open to close (sqlite3 storage requires one thread).
    sink, pending = ThreadPoolExecutor(1, thread_name_prefix="bag-eval-sink"), deque()
    writer = sink.submit(BagWriter, out / "output_bag", storage=opts.storage).result() if opts.write_bag else None

    def finish(batch: list[PairedFrame], inputs: list, results: list) -> None:
        t = time.perf_counter()
        evaluator.add_many([(pf.name or f"{pf.index:06d}_{pf.rgb.stamp_ns}", th, to_bgr8(vis, enc), res,
                             pf.label if label_of is None else label_of(pf), boxes_of(pf, vis.shape[:2]))
                            for pf, (th, vis, enc), res in zip(batch, inputs, results)], scorers)
        timer.add("metrics", time.perf_counter() - t, len(batch))
        if writer is not None:
            t = time.perf_counter()
            for pf, res in zip(batch, results):
                for fr in (pf.thermal, pf.rgb):  # inputs passed through: the bag is self-contained
                    writer.write_image(fr.topic, fr.image, fr.encoding, fr.stamp_ns, fr.frame_id, fr.log_ns)
                _output_messages(writer, pf, res)
            timer.add("write_bag", time.perf_counter() - t, len(batch))
        bar.update(len(batch))

    t_run = time.perf_counter()
    try:
        with BagReader(bag) as reader:
            pairs = iter_pairs(reader, thermal_topic, rgb_topic, label_topic, pairing, stats)
            for batch in _batched(pairs, opts.batch_size, timer):
                batch = batch[: opts.limit - frames] if opts.limit else batch
                inputs = [_engine_inputs(pf) for pf in batch]
                t = time.perf_counter()
                results = engine.run_batch([i[0] for i in inputs], [i[1] for i in inputs], rgb_encoding=inputs[0][2],
                                           want_color=writer is not None, want_overlay=True)
                timer.add("engine", time.perf_counter() - t, len(batch))
                for res in results:
                    for k, v in res.timings.items():  # engine timings are per batch
                        timer.add(f"engine.{k}", v / 1e3 / len(batch))
                pending.append(sink.submit(finish, batch, inputs, results))
                while len(pending) > 2:
                    pending.popleft().result()
                frames += len(batch)
                if first is None:
                    pending.popleft().result()  # the first batch's one-off costs end when it is scored
                    first = (frames, time.perf_counter() - t_run)
                if opts.limit and frames >= opts.limit:
                    break
            pairs.close()  # settles the pairer statistics
    except BagError as exc:
        error = str(exc)
    finally:
        for fut in pending:  # what was computed before a fault is kept
            fut.result()
        if writer is not None:
            sink.submit(writer.close).result()
        sink.shutdown()
        if scorers is not None:
            scorers.shutdown()
        run_s = time.perf_counter() - t_run
        bar.close()
    run = {"bag": str(bag), "thermal_topic": thermal_topic, "rgb_topic": rgb_topic, "label_topic": label_topic,
           "labels_dir": str(label_dir) if label_dir else None, "label_mode": opts.label_mode,
           "checkpoint": f"random-init {opts.random_init}" if opts.random_init else str(opts.checkpoint or "default"),
           "model": engine.describe(), "variant": engine.variant, "device": str(engine.device),
           "precision": str(engine.precision),
           "batch_size": opts.batch_size, "scoring_threads": workers, "boxes": opts.boxes}
    report = evaluator.finish(out, run)
    report["pairing"] = stats.to_dict()
    report["throughput"] = {"frames": frames, "wall_s": run_s, "fps": frames / run_s if run_s > 0 else 0.0,
                            "model_load_s": load_s}
    if first is not None and frames > first[0] and run_s > first[1]:
        # after the first batch: what a long bag runs at (the first pays autotuning and graph capture)
        report["throughput"].update(first_batch_s=first[1], steady_fps=(frames - first[0]) / (run_s - first[1]))
    report["stage_timings_ms"] = timer.summary()
    if writer is not None:
        report["output_bag"] = str(writer.path)
    if error:
        report["error"] = error
    write_json(out / "report.json", report)
    (out / "report.md").write_text(markdown_report(report) + "\n" + _bag_markdown(report))
    return report


def _cmd_eval(args: argparse.Namespace) -> int:
    pairing = PairingOptions(slop=args.slop, thermal_offset=args.thermal_offset, queue_size=args.queue_size)
    opts = EvalOptions(checkpoint=args.checkpoint, random_init=args.random_init, label_mode=args.label_mode,
                       device=args.device, batch_size=args.batch_size, write_bag=args.write_bag,
                       storage=args.storage, limit=args.limit, workers=args.workers, boxes=args.boxes,
                       box_format=args.box_format, box_classes=args.box_classes, **tta_overrides(args),
                       metrics=None if args.metrics == "all" else [m for m in args.metrics.split(",") if m])
    try:
        report = evaluate_bag(args.bag, args.out, args.thermal_topic, args.rgb_topic, args.label_topic, args.labels,
                              pairing, opts)
    except (BagError, FileNotFoundError, ValueError) as exc:  # bad bag, missing weights, bad label mode
        print(f"mafs bag eval: error: {exc}")
        return 2
    tp, pr = report["throughput"], report["pairing"]
    print(f"{tp['frames']} pairs in {tp['wall_s']:.2f} s = {tp['fps']:.2f} frames/s on {report['run']['device']}; "
          f"pairing: matched {pr.get('matched')}, unmatched {pr.get('unmatched')}; report in {args.out}")
    if report.get("error"):
        print(f"mafs bag eval: error: {report['error']} (partial report written)")
        return 1
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    pairing = PairingOptions(slop=args.slop, thermal_offset=args.thermal_offset, queue_size=args.queue_size)
    try:
        m = export_bag(args.bag, args.out, args.thermal_topic, args.rgb_topic, args.label_topic, pairing,
                       boxes=args.boxes, box_format=args.box_format, box_classes=args.box_classes)
    except (BagError, FileNotFoundError, ValueError) as exc:  # ValueError: a bad --boxes source
        print(f"mafs bag export: error: {exc}")
        return 2
    print(f"exported {m['pairs']} pairs to {args.out} (ir/, vi/{', label/' if m['label_topic'] else ''}"
          f"{', boxes/' if 'boxes' in m else ''}, manifest.json)")
    if "boxes" in m:
        b = m["boxes"]
        print(f"boxes for {b['frames_with_boxes']} pairs, YOLO with box_classes {b['box_classes']!r}"
              + "".join(f"\nmafs bag export: warning: {e}" for e in b["errors"]))
    if m.get("error"):
        print(f"mafs bag export: error: {m['error']} (pairs before the fault were kept)")
        return 1
    return 0


def _add_box_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--boxes", help="detection boxes (YOLO .txt / VOC .xml folder, or a COCO .json) joined to the "
                                   "pairs by the bag's source names, the export names or the RGB stamp (ns)")
    p.add_argument("--box-format", default="auto", choices=("auto", "yolo", "coco", "voc"))
    p.add_argument("--box-classes", metavar="MAP", help="file class -> model class, e.g. 0:person,1:bike,2:car")


def _add_pairing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--thermal-topic", default=THERMAL_TOPIC)
    p.add_argument("--rgb-topic", default=RGB_TOPIC)
    p.add_argument("--slop", type=float, default=None, help="max stamp difference of a pair, s (node default)")
    p.add_argument("--thermal-offset", type=float, default=0.0,
                   help="seconds added to thermal stamps before pairing (as the node's thermal_offset)")
    p.add_argument("--queue-size", type=int, default=None, help="pairer queue per stream (node default)")


def register(subparsers, registry: dict) -> None:
    bag = subparsers.add_parser("bag", help="rosbag2 tools: make, eval, export (and play)",
                                description="rosbag2 tools; bags are read and written with rosbags (no ROS needed)")
    sub = bag.add_subparsers(dest="bag_command", required=True)
    registry["bag"] = sub

    p = sub.add_parser("make", help="a bag from a folder of IR/VIS pairs, with camera-like timing")
    p.add_argument("--ir", required=True, help="folder of thermal images")
    p.add_argument("--vis", required=True, help="folder of visible images (same file names)")
    p.add_argument("--labels", help="folder of label images (same names) -> /labels/image")
    p.add_argument("--out", required=True, help="output bag directory (must not exist)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--rate", type=float, default=30.0, help="frames per second (default 30)")
    p.add_argument("--jitter-ms", type=float, default=3.0, help="Gaussian stamp jitter per camera (ms)")
    p.add_argument("--thermal-offset-ms", type=float, default=15.0, help="thermal stamps trail RGB by this (ms)")
    p.add_argument("--limit", type=int, help="use only the first N pairs")
    p.add_argument("--loop", type=int, default=1, help="repeat the pairs K times")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make)

    p = sub.add_parser("eval", help="run the engine over a bag offline and write a report (+ output bag)")
    p.add_argument("bag", help="rosbag2 directory, .mcap or .db3")
    _add_pairing_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--label-topic", help="label images matched to RGB frames by exact stamp")
    g.add_argument("--labels", help="folder of labels matched by the bag's name manifest, else by pair order")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--write-bag", action="store_true", help="also write <out>/output_bag with the node's outputs")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="storage of the output bag")
    p.add_argument("--label-mode", default="multiclass",
                   help="'multiclass' or 'binary:CLASSNAME' for 0/255 one-class masks (as `mafs eval`)")
    p.add_argument("--checkpoint", help="weights (default: shipped mafs_t)")
    p.add_argument("--random-init", metavar="VARIANT", help="seeded untrained network instead of weights (smoke runs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1)
    add_tta_args(p)
    p.add_argument("--limit", type=int, help="stop after N pairs")
    p.add_argument("--workers", type=int, default=0, help="threads scoring frames (default: one per core, up to 16)")
    p.add_argument("--metrics", default="all",
                   help="comma-separated fusion metrics (EN,SD,SF,AG,MI,SCD,VIF,Qabf,SSIM), 'all', or '' for none")
    _add_box_args(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="paired frames of a bag as a training folder (ir/, vi/, label/)")
    p.add_argument("bag")
    _add_pairing_args(p)
    p.add_argument("--label-topic", help=f"default: {LABEL_TOPIC} when the bag has it")
    p.add_argument("--out", required=True)
    _add_box_args(p)
    p.set_defaults(func=_cmd_export)
