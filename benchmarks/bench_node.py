"""End-to-end node benchmark: camera pairs at a fixed rate through real DDS, three processes (spawn).

    .venv/bin/python benchmarks/bench_node.py [--duration 30] [--rate 30] [--checkpoint weights/mafs_t.safetensors]
    .venv/bin/python benchmarks/bench_node.py --rgb-size 1920x1080 --thermal-size 640x512 --thermal-encoding mono16 \
        --thermal-delay-ms 12 --rate 5 --checkpoint weights/mafs_t.safetensors      # a Boson-like rig

publisher process -> node process (mafs_ros.node.main) -> this process (receiver). Reports end-to-end
latency (output receive time minus header stamp, one host clock), the node's overhead (latency minus the
engine's `total`, measured per frame by the node and read from /diagnostics; plus the receiver-side
p50 latency minus the engine p50), drop rate, and the node process's CPU %. Without --checkpoint an
untrained --variant (default mafs_t) is used (speed does not depend on the weights). Writes
benchmarks/results/bench_node.json.

DDS: single host (loopback discovery), with the shipped shared-memory profile (config/fastdds_shm.xml)
or, with --dds-profile none, Fast DDS's defaults; `received` (messages that reached the node's
callbacks, from /diagnostics) against `pairs_sent` is what the transport delivered, whatever the engine
keeps up with. The node is told the RGB camera's size (model.warmup_size), so it warms up at it.
--input-size sets the node's model.input_size (default auto: the working resolution; 0 = the camera's own
size). Frames are real MSRS pairs (../shared/data, else the committed data/samples) resized to
the two cameras' sizes; mono16 thermal is the 8-bit frame as raw counts (x 64 + 20000, a 14-bit-like range).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mafs_core.sizes import parse_input_size  # noqa: E402
from mafs_ros.env import configure_ros_env, unique_domain_id  # noqa: E402

NS = "/bench"


def _engine(variant: str, device: str, _params):
    from mafs_core.engine import FusionSegmenter

    return FusionSegmenter.from_variant(variant, device=device, warmup=0)


def _node(args: list[str], variant: str, device: str, use_variant: bool) -> None:
    from mafs_ros.node import main

    main(args, engine_factory=functools.partial(_engine, variant, device) if use_variant else None)


def _size(text: str) -> tuple[int, int]:
    """'WxH' -> (H, W)."""
    size = parse_input_size(text)
    if not isinstance(size, tuple):
        raise argparse.ArgumentTypeError(f"{text!r}: use WxH, e.g. 1920x1080")
    return size


def _frames(n: int, rgb_size: tuple[int, int], th_size: tuple[int, int], th_encoding: str,
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real MSRS pairs (../shared/data, else data/samples) resized to each camera's (H, W)."""
    import cv2

    from mafs_core.io import list_pairs, read_ir, read_vis

    root = Path(os.environ.get("MAFS_DATA_ROOT", REPO.parent / "shared" / "data")) / "msrs"
    if not (root / "ir").is_dir():
        root = REPO / "data" / "samples" / "msrs"
    out = []
    for p in list_pairs(root / "ir", root / "vi")[:n]:
        th = cv2.resize(read_ir(p.ir), th_size[::-1], interpolation=cv2.INTER_AREA)
        if th_encoding == "mono16":
            th = th.astype(np.uint16) * 64 + 20000
        out.append((th, cv2.resize(read_vis(p.vis), rgb_size[::-1], interpolation=cv2.INTER_AREA)))
    return out


def _publisher(rate: float, duration: float, rgb_size: tuple[int, int], th_size: tuple[int, int], th_encoding: str,
               th_delay_ms: float, start: mp.Event, done: mp.Value) -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from mafs_ros.conversions import numpy_to_image

    # messages built once: the publisher stands in for camera drivers (C++ on a robot) and shares the cores
    # with the node, so per-frame Python copies of 6 MB frames here would be charged to the node's latency
    msgs = [tuple(numpy_to_image(a, e, Header(frame_id="camera")) for a, e in ((th, th_encoding), (rgb, "bgr8")))
            for th, rgb in _frames(16, rgb_size, th_size, th_encoding)]
    rclpy.init()
    node = rclpy.create_node("bench_publisher", namespace=NS)
    pubs = (node.create_publisher(Image, "thermal/image", qos_profile_sensor_data),
            node.create_publisher(Image, "rgb/image", qos_profile_sensor_data))
    while min(p.get_subscription_count() for p in pubs) == 0:
        time.sleep(0.05)
    start.wait()
    t0, k = time.monotonic(), 0
    while time.monotonic() - t0 < duration:
        stamp = time.time_ns()
        for pub, msg, late in zip(pubs, msgs[k % len(msgs)], (th_delay_ms, 0.0)):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp + round(late * 1e6), 1_000_000_000)
            pub.publish(msg)
        k += 1
        time.sleep(max(0.0, t0 + k / rate - time.monotonic()))
    done.value = k
    node.destroy_node()
    rclpy.shutdown()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--rgb-size", type=_size, default=(480, 640), metavar="WxH", help="RGB camera (bgr8)")
    ap.add_argument("--thermal-size", type=_size, default=None, metavar="WxH", help="thermal camera (default: RGB's)")
    ap.add_argument("--thermal-encoding", choices=("mono8", "mono16"), default="mono8")
    ap.add_argument("--thermal-delay-ms", type=float, default=0.0, help="thermal stamps this much later than RGB's")
    ap.add_argument("--checkpoint", default=None, help="default: an untrained --variant")
    ap.add_argument("--variant", default="mafs_t", help="network when no --checkpoint is given")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dds-profile", choices=("shm", "none"), default="shm",
                    help="shm: config/fastdds_shm.xml (default); none: Fast DDS defaults (both loopback only)")
    ap.add_argument("--input-size", default="auto", help="model.input_size: auto, 0 or WxH")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_node.json"))
    args = ap.parse_args()
    configure_ros_env(domain_id=unique_domain_id(), log_dir=REPO / "build" / "ros_log")
    if args.dds_profile == "none":  # still loopback only (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST)
        os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from mafs_ros.diagnostics import to_dict

    node_args = ["--local", "--ros-args", "-r", f"__ns:={NS}", "-p", f"model.device:={args.device}",
                 "-p", "model.warmup_iterations:=3", "-p", f"model.input_size:={args.input_size}",
                 "-p", f"model.warmup_size:={args.rgb_size[1]}x{args.rgb_size[0]}",  # as docs/cameras.md advises
                 "-p", "diagnostics.period:=1.0", "--log-level", "warn"]
    if args.checkpoint:
        node_args += ["-p", f"model.checkpoint:={Path(args.checkpoint).resolve()}"]
    ctx = mp.get_context("spawn")
    node_proc = ctx.Process(target=_node, args=(node_args, args.variant, args.device, not args.checkpoint), daemon=True)
    node_proc.start()
    start, done = ctx.Event(), ctx.Value("i", 0)
    th_size = args.thermal_size or args.rgb_size
    pub_proc = ctx.Process(target=_publisher, args=(args.rate, args.duration, args.rgb_size, th_size,
                                                    args.thermal_encoding, args.thermal_delay_ms, start, done),
                           daemon=True)
    pub_proc.start()

    rclpy.init()
    rx = rclpy.create_node("bench_receiver", namespace=NS)
    latencies: list[float] = []
    recording = threading.Event()

    def on_fused(msg: Image) -> None:
        if recording.is_set():
            latencies.append(time.time() - msg.header.stamp.sec - msg.header.stamp.nanosec * 1e-9)

    rx.create_subscription(Image, "fused/image", on_fused, QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    diags: list[dict] = []
    rx.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(
        {"message": s.message, **to_dict(s)} for s in m.status if s.hardware_id == f"{NS}/mafs_node"), 10)
    executor = SingleThreadedExecutor()
    executor.add_node(rx)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while not diags or diags[-1].get("state") != "active":  # model loaded, warmed up, subscribed
            if time.monotonic() > deadline or not node_proc.is_alive():
                raise SystemExit("node did not come up")
            time.sleep(0.1)
        time.sleep(1.0)
        cpu0, t0 = _cpu_seconds(node_proc.pid), time.monotonic()
        recording.set()
        start.set()
        pub_proc.join(args.duration + 60)
        time.sleep(1.5)  # last outputs and one more diagnostics message
        recording.clear()
        cpu = (_cpu_seconds(node_proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        d = diags[-1]
    finally:
        if node_proc.is_alive():
            os.kill(node_proc.pid, signal.SIGINT)
            node_proc.join(15)
        executor.shutdown(timeout_sec=2)
        rx.destroy_node()
        rclpy.shutdown()

    sent = int(done.value)
    lat = np.asarray(latencies) * 1e3
    engine_p50 = float(d.get("engine.total_ms.p50", "nan"))
    result = {
        "name": "bench_node",
        "settings": {"rgb_size": f"{args.rgb_size[1]}x{args.rgb_size[0]}",
                     "thermal": f"{th_size[1]}x{th_size[0]} {args.thermal_encoding}, stamps "
                                f"{args.thermal_delay_ms:g} ms late",
                     "rate_hz": args.rate, "duration_s": args.duration,
                     "checkpoint": args.checkpoint or f"untrained {args.variant}", "device": d.get("device"),
                     "precision": d.get("precision"), "sync_backend": d.get("sync_backend"),
                     "dds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", "none (Fast DDS defaults)"),
                     "model.input_size": args.input_size},
        "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "pairs_sent": sent,
        "received": {"thermal": int(d.get("received.thermal", 0)), "rgb": int(d.get("received.rgb", 0))},
        "delivery_ms": {"p50": float(d.get("input_ms.p50", "nan")), "p99": float(d.get("input_ms.p99", "nan")),
                        "note": "RGB stamp to pairing in the node: DDS transport + callback"},
        "outputs": int(lat.size),
        "drop_rate": 1 - lat.size / sent if sent else None,
        "answered": lat.size / sent if sent else None,
        "latency_ms": {"p50": float(np.median(lat)), "p99": float(np.percentile(lat, 99)), "max": float(lat.max())}
        if lat.size else None,
        "latency_ms_each": [round(float(x), 1) for x in lat],  # in arrival order: where the slow ones fall
        "engine_total_ms": {"p50": engine_p50, "p99": float(d.get("engine.total_ms.p99", "nan"))},
        "engine_stage_ms_p50": {k.removeprefix("engine.").removesuffix("_ms.p50"): float(v) for k, v in d.items()
                                if k.startswith("engine.") and k.endswith("_ms.p50")},
        "node_overhead_ms": {"p50": float(d.get("overhead_ms.p50", "nan")),
                             "p99": float(d.get("overhead_ms.p99", "nan")),
                             "note": "node-measured per frame: publish time - stamp - engine total"},
        "node_own_ms": {"p50": float(d.get("node_ms.p50", "nan")), "p99": float(d.get("node_ms.p99", "nan")),
                        "note": "overhead minus the wait for a busy engine (newest-pair mailbox): transport in, "
                                "pairing, decode, encode + publish"},
        "receiver_overhead_ms_p50": float(np.median(lat)) - engine_p50 if lat.size else None,
        "node_stage_ms_p50": {k.removesuffix(".p50"): float(v) for k, v in d.items() if k.endswith("_ms.p50")
                              and not k.startswith(("engine.", "latency", "overhead", "node_ms"))},
        "dropped": {"replaced": int(d.get("dropped.replaced", 0)), "stale": int(d.get("dropped.stale", 0))},
        "node_cpu_percent": cpu,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{'metric':34s} value")
    rows = [("device / precision", f"{d.get('device')} / {d.get('precision')}"),
            ("pairs sent / outputs", f"{sent} / {lat.size}"), ("drop rate", f"{result['drop_rate'] or 0:.1%}"),
            ("received thermal / rgb", f"{result['received']['thermal']} / {result['received']['rgb']}"),
            ("DDS delivery p50 / p99 (ms)", f"{result['delivery_ms']['p50']:.1f} / {result['delivery_ms']['p99']:.1f}"),
            ("latency p50 / p99 (ms)", f"{np.median(lat):.1f} / {np.percentile(lat, 99):.1f}" if lat.size else "-"),
            ("engine total p50 / p99 (ms)", f"{engine_p50:.1f} / {result['engine_total_ms']['p99']:.1f}"),
            ("node overhead p50 / p99 (ms)", f"{result['node_overhead_ms']['p50']:.2f} / "
                                             f"{result['node_overhead_ms']['p99']:.2f}"),
            ("node's own time p50 / p99 (ms)", f"{result['node_own_ms']['p50']:.2f} / "
                                               f"{result['node_own_ms']['p99']:.2f}"),
            ("receiver-side overhead p50 (ms)", f"{result['receiver_overhead_ms_p50'] or float('nan'):.2f}"),
            ("node CPU %", f"{cpu:.0f}")]
    rows += [(f"  stage {k} p50 (ms)", f"{v:.2f}") for k, v in result["node_stage_ms_p50"].items()]
    rows += [(f"  engine {k} p50 (ms)", f"{v:.2f}") for k, v in result["engine_stage_ms_p50"].items()]
    for k, v in rows:
        print(f"{k:34s} {v}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
