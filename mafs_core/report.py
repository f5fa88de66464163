"""Writing evaluation reports: report.json, report.md (tables) and PNG charts (matplotlib, Agg backend).

Kept apart from the metric code so `mafs eval`, `mafs bag eval` and the benchmarks all render the same
report dict the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mafs_core.io import jsonable
from mafs_core.metrics import FUSION_METRICS


@dataclass
class Sample:
    """One row of the sample grid, already shrunk to a thumbnail (BGR except the grey IR)."""
    name: str
    ir: np.ndarray
    vis_bgr: np.ndarray
    fused_bgr: np.ndarray
    overlay_bgr: np.ndarray


def write_json(path: str | Path, report: dict) -> None:
    Path(path).write_text(json.dumps(jsonable(report), indent=2) + "\n")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fusion_table(fusion: dict[str, dict[str, float]], metrics: Sequence[str] = FUSION_METRICS) -> str:
    """Markdown table, one row per method; the best value of each column (all higher-is-better) in bold."""
    methods = list(fusion)
    cols = [m for m in metrics if any(m in fusion[k] for k in methods)]
    best = {c: max((fusion[k][c] for k in methods if fusion[k].get(c) is not None), default=None) for c in cols}
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for k in methods:
        cells = []
        for c in cols:
            v = fusion[k].get(c)
            s = _fmt(v)
            cells.append(f"**{s}**" if len(methods) > 1 and v is not None and v == best[c] else s)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def box_table(boxes: dict) -> str:
    """The "boxes" section of a report (mafs_core.boxes.BoxScores.to_dict): one row per box class."""
    out = [f"## Box labels ({boxes['num_images']} images with box files)", "",
           f"Boxes found: share of boxes with >= {boxes['min_cover']:.0%} of their pixels predicted as the class; "
           "pixels in boxes: share of the predicted pixels inside a box of the class; box F: their harmonic mean; "
           f"component F1: connected components (>= {boxes['min_area']} px) matched to boxes at IoU >= "
           f"{boxes['iou_threshold']}. Pooled over images; see docs/metrics.md.", "",
           "| class | boxes | boxes found | pixels in boxes | box F | component F1 | TP | FP | FN |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in boxes["per_class"].items():
        out.append(f"| {name} | {r['boxes']} | {_fmt(r['boxes_found'])} | {_fmt(r['pixels_in_boxes'])} | "
                   f"{_fmt(r['box_f'])} | {_fmt(r['cc_f1'])} | {r['tp']} | {r['fp']} | {r['fn']} |")
    m = boxes["mean"]
    out.append(f"| **mean** | | {_fmt(m['boxes_found'])} | {_fmt(m['pixels_in_boxes'])} | {_fmt(m['box_f'])} | "
               f"{_fmt(m['cc_f1'])} | | | |")
    return "\n".join(out)


def markdown_report(report: dict) -> str:
    """report.md: the numbers of report.json as tables (per-image values stay in the JSON)."""
    out = ["# MAFS evaluation report", ""]
    info = {k: v for k, v in report.get("run", {}).items() if v is not None}
    if info:
        out += ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info.items()] + [""]
    out += [f"Images evaluated: **{report.get('num_images', 0)}**"
            + (f", skipped: {len(report['skipped'])}" if report.get("skipped") else ""), ""]
    if report.get("fusion"):
        out += ["## Fusion metrics (mean over images, higher is better)", "",
                fusion_table(report["fusion"]), ""]
        note = ("EN/SD/SF/AG on the fused image; MI, VIF, SSIM are sums over the two sources; "
                "MI in bits; VIS as BT.601 luminance. See docs/metrics.md.")
        out += [note, ""]
    for cond, block in report.get("fusion_by_condition", {}).items():
        out += [f"### {cond} ({block['num_images']} images)", "", fusion_table(block["fusion"]), ""]
    seg = report.get("segmentation")
    if seg:
        out += [f"## Segmentation ({seg['label_mode']}, {seg['num_labelled']} labelled images)", ""]
        if seg.get("headline"):
            out += [f"**{seg['headline']['name']}: {_fmt(seg['headline']['value'])}**", ""]
        teacher = report.get("segmentation_teacher")
        out += [f"mIoU: **{_fmt(seg['miou'])}**, pixel accuracy: **{_fmt(seg['pixel_accuracy'])}**"
                + (f"; the teacher on the same frames: mIoU **{_fmt(teacher['miou'])}**, pixel accuracy "
                   f"**{_fmt(teacher['pixel_accuracy'])}**" if teacher else ""), ""]
        if teacher:
            out += ["| class | IoU | teacher IoU | label pixels | predicted pixels | teacher pixels |",
                    "|---|---:|---:|---:|---:|---:|"]
            for name in seg["class_names"]:
                out.append(f"| {name} | {_fmt(seg['iou'][name])} | {_fmt(teacher['iou'][name])} | "
                           f"{seg['gt_pixels'][name]} | {seg['pred_pixels'][name]} | {teacher['pred_pixels'][name]} |")
        else:
            out += ["| class | IoU | label pixels | predicted pixels |", "|---|---:|---:|---:|"]
            for name in seg["class_names"]:
                out.append(f"| {name} | {_fmt(seg['iou'][name])} | {seg['gt_pixels'][name]} | "
                           f"{seg['pred_pixels'][name]} |")
        out.append("")
    if report.get("boxes"):
        out += [box_table(report["boxes"]), ""]
    if report.get("predicted_class_fraction"):
        out += ["## Predicted class share of pixels", "", "| class | fraction |", "|---|---:|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in report["predicted_class_fraction"].items()] + [""]
    if report.get("timings_ms"):
        out += ["## Engine timings (ms per image)", "", "| stage | mean | median | p99 |", "|---|---:|---:|---:|"]
        for k, t in report["timings_ms"].items():
            out.append(f"| {k} | {_fmt(t['mean'], 2)} | {_fmt(t['median'], 2)} | {_fmt(t['p99'], 2)} |")
        out.append("")
    if report.get("warnings"):
        out += ["## Warnings", ""] + [f"- {k}: {v}" for k, v in report["warnings"].items()] + [""]
    if report.get("skipped"):
        out += ["## Skipped", ""] + [f"- {s['name']}: {s['reason']}" for s in report["skipped"][:50]] + [""]
    return "\n".join(out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on robots or CI
    import matplotlib.pyplot as plt

    return plt


def plot_iou(path: str | Path, seg: dict, title: str = "Per-class IoU") -> None:
    """Bar chart of per-class IoU; classes absent from labels and predictions are shown as 'n/a'."""
    plt = _pyplot()
    names = seg["class_names"]
    vals = [seg["iou"][n] for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 1.5), 3.6))
    ax.bar(range(len(names)), [v if v is not None else 0.0 for v in vals], color="#4878a8")
    for i, v in enumerate(vals):
        ax.text(i, (v or 0.0) + 0.01, "n/a" if v is None else f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    if seg.get("miou") is not None:
        ax.axhline(seg["miou"], color="#c44e52", ls="--", lw=1, label=f"mIoU {seg['miou']:.3f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("IoU")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(path: str | Path, samples: Sequence[Sample]) -> None:
    """Grid with one row per sample: IR | VIS | fused | segmentation overlay."""
    plt = _pyplot()
    rows = max(1, len(samples))
    h, w = samples[0].vis_bgr.shape[:2] if samples else (240, 320)
    fig, axes = plt.subplots(rows, 4, figsize=(4 * 2.6, rows * 2.6 * h / w + 0.4), squeeze=False)
    for r, s in enumerate(samples):
        imgs = [s.ir, cv2.cvtColor(s.vis_bgr, cv2.COLOR_BGR2RGB), cv2.cvtColor(s.fused_bgr, cv2.COLOR_BGR2RGB),
                cv2.cvtColor(s.overlay_bgr, cv2.COLOR_BGR2RGB)]
        for c, (img, title) in enumerate(zip(imgs, ("IR", "VIS", "fused", "overlay"))):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(s.name, fontsize=8)
    if not samples:
        for ax in axes[0]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
