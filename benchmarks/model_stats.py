"""Parameters, FLOPs and latency of every MAFS variant (full joint fusion+segmentation forward).

    .venv/bin/python benchmarks/model_stats.py                       # CPU, 480x640, all variants
    python benchmarks/model_stats.py --device cuda --precision fp16 --compile   # CUDA graphs

Latency: batch 1, eval, inference_mode, median and p99 over --runs timed runs after warm-up; repeated
--rounds times and the round with the best median kept (the CPU may be shared). "eager" is the model as
built; "deploy" is `MAFS.deploy()` (BN folded, channels_last). Writes (merges into) benchmarks/results/model_stats.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mafs_core.model import VARIANTS, build_model

RESULTS = Path(__file__).resolve().parent / "results" / "model_stats.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def count_flops(name: str, h: int, w: int) -> int:
    model = build_model(name).eval()
    ir, vis = torch.rand(1, 1, h, w), torch.rand(1, 3, h, w)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(ir, vis)
    return fc.get_total_flops()


def time_model(model: torch.nn.Module, ir: torch.Tensor, vis: torch.Tensor, runs: int, warmup: int,
               rounds: int, clock: str = "wall") -> dict[str, float]:
    cuda = ir.is_cuda
    now = time.perf_counter if clock == "wall" else time.process_time
    best: list[float] | None = None
    with torch.inference_mode():
        for _ in range(warmup):
            model(ir, vis)
        for _ in range(rounds):
            ts = []
            for _ in range(runs):
                if cuda:
                    torch.cuda.synchronize()
                t0 = now()
                model(ir, vis)
                if cuda:
                    torch.cuda.synchronize()
                ts.append((now() - t0) * 1e3)
            if best is None or statistics.median(ts) < statistics.median(best):
                best = ts
    assert best is not None
    best.sort()
    p99 = best[min(len(best) - 1, round(0.99 * (len(best) - 1)))]
    return {"median_ms": round(statistics.median(best), 2), "p99_ms": round(p99, 2), "min_ms": round(best[0], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["eager", "deploy"], choices=["eager", "deploy"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (see --compile-mode)")
    ap.add_argument("--compile-mode", default="reduce-overhead", help="'reduce-overhead' = CUDA graphs on GPU")
    ap.add_argument("--clock", default="wall", choices=["wall", "process"],
                    help="'process': this process's CPU time, a proxy little affected by other load (use --threads 1)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    h, w = args.height, args.width

    rows = []
    for name in args.variants:
        torch.manual_seed(0)
        model = build_model(name).eval()
        cfg = model.config
        row = {"variant": name, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
               "gflops": round(count_flops(name, h, w) / 1e9, 2), "widths": list(cfg.widths),
               "depths": list(cfg.depths), "sfe_channels": list(cfg.sfe_channels), "dec_dim": cfg.dec_dim}
        for mode in args.modes:
            m = build_model(name).eval()
            if mode == "deploy":
                m.deploy()
            m = m.to(device=device, dtype=dtype)
            if args.compile:
                m = torch.compile(m, mode=args.compile_mode)
            ir = torch.rand(1, 1, h, w, device=device, dtype=dtype)
            vis = torch.rand(1, 3, h, w, device=device, dtype=dtype)
            row[mode] = time_model(m, ir, vis, args.runs, args.warmup, args.rounds, args.clock)
            print(f"{name} {mode}: {row[mode]}", flush=True)
        rows.append(row)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    settings = {"device": str(device), "device_name": dev_name, "precision": args.precision, "height": h, "width": w,
                "batch": 1, "threads": torch.get_num_threads(), "clock": args.clock, "runs": args.runs,
                "rounds": args.rounds,
                "compile": args.compile and args.compile_mode, "torch": torch.__version__,
                "forward": "joint, eval, inference_mode"}
    for r in rows:
        r["settings"] = settings
    # Merge with earlier results in the same file so variants can be measured in separate (shorter) runs.
    old = json.loads(args.out.read_text()).get("variants", []) if args.out.exists() else []
    merged = {r["variant"]: r for r in old} | {r["variant"]: r for r in rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"variants": [merged[k] for k in VARIANTS if k in merged]}, indent=2) + "\n")

    print(f"\n{h}x{w}, batch 1, {args.precision}, {dev_name}, {args.clock} clock\n")
    cols = " | ".join(f"{m} median / p99 ms" for m in args.modes)
    print(f"| variant | widths | depths | params (M) | GFLOPs | {cols} |")
    print("|---|---|---|---|---|" + "---|" * len(args.modes))
    for r in rows:
        lat = " | ".join(f"{r[m]['median_ms']:.1f} / {r[m]['p99_ms']:.1f}" for m in args.modes)
        print(f"| {r['variant']} | {tuple(r['widths'])} | {tuple(r['depths'])} | {r['params_M']:.2f} "
              f"| {r['gflops']:.2f} | {lat} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
