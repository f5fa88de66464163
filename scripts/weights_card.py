"""weights/VARIANT.json and weights/eval/VARIANT_*.md: how shipped weights were made and how they score.

    python scripts/weights_card.py weights/mafs_t.safetensors --stage1 runs/mafs_t/stage1 \
        --eval val=DIR person=DIR msrs=DIR roadscene=DIR --reference ../shared/reference/peer_fusion_dev.md

Each EVAL_DIR is a `mafs eval` output folder (report.json). `val` is the committed validation split scored with
`--labels --baseline-teacher --baselines`; `person` the person masks (`--label-mode binary:person
--baseline-teacher`); `msrs` / `roadscene` the reference sets (`--baselines`), compared with the peers' figures of
the reference file (a method is beaten on a metric when our mean is at least the peer's).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from safetensors import safe_open

METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")


def read_meta(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["mafs"])


def reference_tables(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{set: {method: {metric: value}}} from the peers' markdown: `## MSRS ...` / `## RoadScene ...` tables."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            current = "msrs" if "MSRS" in line else "roadscene" if "RoadScene" in line else None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current and len(cells) == 1 + len(METRICS) and re.match(r"^-?[0-9.]+$", cells[1]):
            out.setdefault(current, {})[cells[0]] = dict(zip(METRICS, map(float, cells[1:]), strict=True))
    return out


def fusion_comparison(model: dict[str, float], peers: dict[str, dict[str, float]]) -> dict:
    return {name: {"beaten_on": [m for m in METRICS if model[m] >= p[m]],
                   "count": sum(model[m] >= p[m] for m in METRICS)}
            for name, p in peers.items() if not name.startswith("mafs")}


def seg_table(rep: dict) -> dict:
    seg, teacher = rep["segmentation"], rep.get("segmentation_teacher")
    row = {"images": seg["num_labelled"], "miou": seg["miou"], "iou": seg["iou"]}
    if teacher:
        row["teacher"] = {"miou": teacher["miou"], "iou": teacher["iou"]}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", type=Path)
    p.add_argument("--stage1", type=Path, help="the Stage I run dir (final.safetensors, summary_rank0.json)")
    p.add_argument("--eval", nargs="+", default=[], metavar="NAME=DIR")
    p.add_argument("--reference", type=Path)
    p.add_argument("--extra", type=Path, help="JSON merged into the card (selection notes, timings)")
    args = p.parse_args()
    meta = read_meta(args.weights)
    tr = meta["training"]
    card: dict = {"variant": meta["variant"], "file": args.weights.name,
                  "size_mb": round(args.weights.stat().st_size / 2**20, 2), "sha256": meta.get("sha256")}
    if args.stage1:
        s1 = read_meta(args.stage1 / "final.safetensors")["training"]
        summary = json.loads((args.stage1 / "summary_rank0.json").read_text())
        card["stage1"] = {"command": s1.get("command"), "steps": s1.get("steps"), "seconds": summary.get("seconds"),
                          "config": s1.get("config")}
    card["stage2"] = {k: tr.get(k) for k in ("command", "steps", "config", "teacher", "ema", "class_bias")}
    card["stage2"]["val_engine"] = {k: v for k, v in (tr.get("val") or {}).items()
                                    if k.startswith(("val/miou", "val/iou_", "val/teacher", "val/images"))}
    refs = reference_tables(args.reference) if args.reference else {}
    evals: dict = {}
    for item in args.eval:
        name, d = item.split("=", 1)
        rep = json.loads((Path(d) / "report.json").read_text())
        e: dict = {"images": rep["num_images"], "run": rep.get("run")}
        if "segmentation" in rep:
            e["segmentation"] = seg_table(rep)
        if "fusion" in rep:
            e["fusion"] = rep["fusion"]
            if name in refs:
                e["fusion_vs_peers"] = fusion_comparison(rep["fusion"]["model"], refs[name])
                e["peers"] = refs[name]
        evals[name] = e
    card["eval"] = evals
    if args.extra:
        card.update(json.loads(args.extra.read_text()))
    out = args.weights.with_suffix(".json")
    out.write_text(json.dumps(card, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
