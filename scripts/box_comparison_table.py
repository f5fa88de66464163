"""Markdown tables of scripts/box_comparison.sh's evaluations: per-class IoU against the real masks of the
validation split, and the box metrics of `mafs eval --boxes`, for the start and each run (a, b, b_drop, c).

    python scripts/box_comparison_table.py runs/boxes > runs/boxes/table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = {"start": "start (distilled, no mask seen)", "a": "(a) teacher only", "b": "(b) teacher + boxes",
        "b_drop": "(b') teacher + boxes, box classes dropped from the teacher", "c": "(c) masks (upper reference)"}
CLASSES = ("person", "car", "bike")


def main(out: Path) -> None:
    reports = {k: json.loads((out / f"eval_{k}" / "report.json").read_text())
               for k in RUNS if (out / f"eval_{k}" / "report.json").exists()}
    print("| run | mIoU | " + " | ".join(f"{c} IoU" for c in CLASSES) + " | "
          + " | ".join(f"{c} box F / comp. F1" for c in CLASSES) + " |")
    print("|---|---:|" + "---:|" * (2 * len(CLASSES)))
    teacher = None
    for k, rep in reports.items():
        seg, box = rep["segmentation"], rep["boxes"]["per_class"]
        teacher = teacher or rep.get("segmentation_teacher")
        cells = [f"{seg['miou']:.3f}"] + [f"{seg['iou'][c]:.3f}" for c in CLASSES]
        cells += [f"{box[c]['box_f']:.3f} / {box[c]['cc_f1']:.3f}" for c in CLASSES]
        print(f"| {RUNS[k]} | " + " | ".join(cells) + " |")
    if teacher:
        print(f"| MFNet teacher | {teacher['miou']:.3f} | "
              + " | ".join(f"{teacher['iou'][c]:.3f}" for c in CLASSES) + " | | | |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/boxes"))
