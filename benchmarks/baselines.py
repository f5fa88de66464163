"""Fusion metrics of trivial fusions on MSRS: the bar a learned model has to clear.

    .venv/bin/python benchmarks/baselines.py [--data ../shared/data/msrs] [--limit N]

Scores pixel-max and mean fusion (and, for context, the IR or the VIS image alone as "fused" image)
with exactly the metrics `mafs eval` reports; prints a table and writes benchmarks/results/baselines.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mafs_core.evaluate import condition_of, ir_to_uint8  # noqa: E402
from mafs_core.io import list_pairs, read_ir, read_vis  # noqa: E402
from mafs_core.metrics import FUSION_METRICS, baseline_fusions, fusion_metrics, to_gray  # noqa: E402
from mafs_core.report import fusion_table  # noqa: E402

METHODS = ("max", "mean", "ir_only", "vis_only")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "msrs",
                    help="folder with ir/ and vi/ sub-folders")
    ap.add_argument("--limit", type=int, help="first N pairs only")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "baselines.json")
    args = ap.parse_args()

    pairs = list_pairs(args.data / "ir", args.data / "vi")[: args.limit]
    if not pairs:
        print(f"no pairs under {args.data}")
        return 2
    values: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)  # (condition, method) -> rows
    seconds = []
    for p in tqdm(pairs, desc="baselines", unit="pair"):
        ir, vis = ir_to_uint8(read_ir(p.ir)), to_gray(read_vis(p.vis))
        fusions = baseline_fusions(ir, vis)
        fusions.update(ir_only=ir, vis_only=vis)
        t0 = time.perf_counter()
        for method in args.methods:
            m = fusion_metrics(ir, vis, fusions[method])
            for cond in ("all", condition_of(p.name) or "other"):
                values[(cond, method)].append(m)
        seconds.append((time.perf_counter() - t0) / len(args.methods))

    def summary(cond: str) -> dict:
        out = {}
        for method in args.methods:
            rows = values.get((cond, method))
            if rows:
                arr = {k: np.array([r[k] for r in rows]) for k in FUSION_METRICS}
                out[method] = {k: float(a.mean()) for k, a in arr.items()}
                out[method + "_std"] = {k: float(a.std()) for k, a in arr.items()}
        return out

    conds = sorted({c for c, _ in values if c != "all"})
    result = {
        "benchmark": "baselines",
        "data": str(args.data),
        "num_pairs": len(pairs),
        "num_by_condition": {c: len(values[(c, args.methods[0])]) for c in conds},
        "metrics": list(FUSION_METRICS),
        "note": "mean over images; MI in bits; VIS as BT.601 luminance; see docs/metrics.md",
        "fusion": summary("all"),
        "fusion_by_condition": {c: summary(c) for c in conds},
        "metric_seconds_per_fusion": {"median": float(np.median(seconds)), "p99": float(np.percentile(seconds, 99))},
        "device": f"cpu ({platform.processor() or platform.machine()}), numpy/OpenCV + torch "
                  f"{__import__('torch').__version__} for SSIM",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{len(pairs)} pairs from {args.data} (mean over images)\n")
    print(fusion_table({m: result["fusion"][m] for m in args.methods}))
    for c in conds:
        print(f"\n{c} ({result['num_by_condition'][c]} pairs)\n")
        print(fusion_table({m: result["fusion_by_condition"][c][m] for m in args.methods}))
    print(f"\nmetric time per fused image: median {result['metric_seconds_per_fusion']['median'] * 1e3:.0f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
