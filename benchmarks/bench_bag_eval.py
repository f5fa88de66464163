"""`mafs bag eval` throughput: frames/s over a rosbag2 of real 640x480 MSRS pairs, offline.

    .venv/bin/python benchmarks/bench_bag_eval.py [--variant mafs_t] [--device cpu] [--frames 24]
        [--batch-size 1] [--checkpoint W] [--storage mcap] [--workers 0]

Builds a bag (30 Hz, 15 ms thermal offset) in a temp dir, then runs `evaluate_bag` twice: without
fusion metrics (the replay pipeline: read + pair + engine + output bag) and with all nine metrics
(what a full report costs). Without --checkpoint an untrained seeded network is used: speed does not
depend on the weights. Writes benchmarks/results/bench_bag_eval_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mafs_core.bag import EvalOptions, MakeConfig, PairingOptions, evaluate_bag, make_bag  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="mafs_t")
    ap.add_argument("--checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    ap.add_argument("--workers", type=int, default=0, help="scoring threads (0 = one per core, up to 16)")
    ap.add_argument("--no-full", action="store_true", help="skip the run with all fusion metrics")
    args = ap.parse_args()

    from mafs_core.engine import FusionSegmenter

    data = Path(os.environ.get("MAFS_DATA_ROOT", REPO.parent / "shared" / "data")) / "msrs"
    if args.checkpoint:
        engine = FusionSegmenter.from_checkpoint(args.checkpoint, device=args.device)
    else:
        engine = FusionSegmenter.from_variant(args.variant, device=args.device)
    engine.warmup((480, 640), 2, batch=args.batch_size)  # the batch shape too: its graph capture is one-off
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / "bench_bag"
        make_bag(data / "ir", data / "vi", bag, cfg=MakeConfig(limit=args.frames, storage=args.storage))
        runs = {"pipeline (no metrics, output bag)": ([], True)}
        if not args.no_full:
            runs["full report (9 fusion metrics)"] = (None, False)
        for i, (name, (metrics, write)) in enumerate(runs.items()):
            t = time.perf_counter()
            rep = evaluate_bag(bag, Path(tmp) / f"out{i}", pairing=PairingOptions(thermal_offset=-0.015),
                               opts=EvalOptions(device=args.device, batch_size=args.batch_size, metrics=metrics,
                                                write_bag=write, storage=args.storage, progress=False,
                                                workers=args.workers),
                               engine=engine)
            st = rep["stage_timings_ms"]
            results[name] = {"fps": rep["throughput"]["fps"], "steady_fps": rep["throughput"].get("steady_fps"),
                             "frames": rep["throughput"]["frames"],
                             "wall_s": time.perf_counter() - t,
                             "stages_ms": {k: {"median": v["median"], "p99": v["p99"]} for k, v in st.items()}}
    settings = {"size": [640, 480], "variant": engine.variant, "checkpoint": args.checkpoint or "untrained",
                "device": str(engine.device), "precision": engine.precision, "batch_size": args.batch_size,
                "frames": args.frames, "storage": args.storage, "scoring_threads": rep["run"]["scoring_threads"],
                "torch_threads": __import__("torch").get_num_threads()}
    out = {"name": "bench_bag_eval", "settings": settings,
           "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0]},
           "runs": results}
    print(f"bag eval, {settings['variant']} on {settings['device']} ({settings['precision']}), 640x480, "
          f"batch {args.batch_size}, {args.frames} frames")
    print(f"{'run':38s} {'fps':>7s} {'steady':>7s} {'engine p50':>11s} {'engine p99':>11s}")
    for name, r in results.items():
        e = r["stages_ms"]["engine"]
        print(f"{name:38s} {r['fps']:7.2f} {r['steady_fps'] or 0:7.2f} {e['median']:9.1f}ms {e['p99']:9.1f}ms")
    dev = engine.device.type
    path = REPO / "benchmarks" / "results" / f"bench_bag_eval_{dev}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
