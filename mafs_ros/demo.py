"""`mafs demo` (what `make demo` runs): the whole ROS path on real MSRS frames, on this machine.

1. builds a rosbag2 (mcap) from day and night MSRS pairs, with camera-like timing (10 Hz, thermal 15 ms late);
2. starts the MAFS node (`python -m mafs_ros.node`, shipped weights, use_sim_time) as its own process;
3. replays the bag into it over real DDS (loopback) with the bag player, /clock included;
4. records the node's outputs into a bag (rclpy subscriptions, rosbags writer) and times each frame;
5. scores the fused images (the `mafs eval` metrics) and writes report.md, montage.png and the bags.

Playback is flow-controlled: the player holds the next frame until the node has answered the previous
one (bag time pauses meanwhile), so on a slow CPU every frame is processed instead of being dropped
by the node's newest-wins mailbox. Latency is from the moment the pair's second image was published
to the moment its mask arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from mafs_core.bag import OUTPUT_TOPICS, RGB_TOPIC, THERMAL_TOPIC, MakeConfig, make_bag
from mafs_core.bagio import IMAGE, BagWriter, image_to_array

REPO = Path(__file__).resolve().parent.parent
RATE_HZ = 10.0
THERMAL_OFFSET_S = 0.015


def _say(step: str, msg: str) -> None:
    print(f"[demo {step}] {msg}", flush=True)


SHARED_MSRS = REPO.parent / "shared" / "data" / "msrs"
SAMPLE_MSRS = REPO / "data" / "samples" / "msrs"


def choose_data(arg: str | None = None) -> tuple[Path, str]:
    """The demo's pair folder and why it was chosen: --data, $MAFS_DATA, ../shared/data/msrs, then the samples.

    The committed samples (data/samples/msrs) come last so that a bare clone still runs the whole demo.
    """
    if arg:
        return Path(arg), "from --data"
    if os.environ.get("MAFS_DATA"):
        return Path(os.environ["MAFS_DATA"]), "from $MAFS_DATA"
    if (SHARED_MSRS / "ir").is_dir() and (SHARED_MSRS / "vi").is_dir():
        return SHARED_MSRS, "the full MSRS test pairs in ../shared/data/msrs beside the checkout"
    return SAMPLE_MSRS, (f"no --data, no $MAFS_DATA and no {SHARED_MSRS}: the sample pairs committed in "
                         "data/samples/msrs (see data/samples/README.md for the full datasets)")


def default_data() -> Path:
    """Where the demo reads pairs when --data is not given (see choose_data)."""
    return choose_data()[0]


def pick_frames(ir_dir: Path, n: int) -> list[str]:
    """n names spread evenly over the set, half day (…D) and half night (…N) when both exist.

    A small folder (the committed samples) gives all it has: a short group's share goes to the other one.
    """
    from mafs_core.io import list_pairs

    names = [p.name for p in list_pairs(ir_dir, ir_dir.parent / "vi")]
    day, night = [x for x in names if x.endswith("D")], [x for x in names if x.endswith("N")]
    groups = [g for g in (day, night) if g] or [names]
    take = [0] * len(groups)
    i = 0
    while sum(take) < min(n, sum(map(len, groups))):  # round robin over the groups that still have names
        if take[i % len(groups)] < len(groups[i % len(groups)]):
            take[i % len(groups)] += 1
        i += 1
    out: list[str] = []
    for g, k in zip(groups, take, strict=True):
        out += [g[j] for j in np.linspace(0, len(g) - 1, k).round().astype(int)]
    return sorted(out)


def resolve_checkpoint(args: argparse.Namespace, out: Path) -> tuple[Path, str]:
    """The weights the node loads; a seeded random-init file for --random-init (development only)."""
    if args.checkpoint:
        return Path(args.checkpoint), str(args.checkpoint)
    if args.random_init:
        import torch

        from mafs_core.checkpoint import save_checkpoint
        from mafs_core.model import build_model

        torch.manual_seed(0)
        path = out / f"random_init_{args.random_init}.safetensors"
        save_checkpoint(path, build_model(args.random_init, num_classes=9),
                        {"training": {"random_init": True, "seed": 0}})
        return path, f"random-init {args.random_init} (UNTRAINED: outputs are not meaningful)"
    from mafs_core.weights import default_checkpoint

    path = default_checkpoint()  # FileNotFoundError with a helpful message when not shipped yet
    return path, f"shipped default weights ({path.name})"


class Recorder:
    """Subscribes to the node's outputs and writes them, as received, into a rosbag2 (raw CDR, no copy)."""

    def __init__(self, node, bag: Path, topics: dict[str, str]):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.node, self.writer = node, BagWriter(bag, storage="mcap")
        self.cond = threading.Condition()
        self.recv: dict[str, dict[int, tuple[float, bytes]]] = {t: {} for t in topics.values()}
        self.diagnostics: dict[str, str] = {}
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for topic in topics.values():
            node.create_subscription(Image, topic, lambda data, t=topic: self._on(t, data), qos, raw=True)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on(self, topic: str, data: bytes) -> None:
        wall = time.perf_counter()
        msg = self.writer.typestore.deserialize_cdr(data, IMAGE)
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        self.writer.write_raw(topic, IMAGE, data, self.node.get_clock().now().nanoseconds or stamp)
        with self.cond:
            self.recv[topic][stamp] = (wall, data)
            self.cond.notify_all()

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if "mafs" in status.name:
                self.diagnostics = {kv.key: kv.value for kv in status.values} | {"level": str(status.level),
                                                                                 "message": status.message}

    def count(self, topic: str) -> int:
        with self.cond:
            return len(self.recv[topic])

    def wait_count(self, topic: str, n: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.recv[topic]) >= n, timeout)


def _start_node(checkpoint: Path, log: Path, device: str, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mafs_ros.node", "--local", "--ros-args",  # one host: loopback DDS
           "-r", "__ns:=/mafs", "-r", f"thermal/image:={THERMAL_TOPIC}", "-r", f"rgb/image:={RGB_TOPIC}",
           "-p", f"model.checkpoint:={checkpoint}", "-p", f"model.device:={device}",
           "-p", "use_sim_time:=true", "-p", f"sync.thermal_time_offset:={-THERMAL_OFFSET_S}"]
    for kv in extra:
        cmd += ["-p", kv]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)


def _stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def run_demo(args: argparse.Namespace) -> int:
    from mafs_ros.env import configure_ros_env, unique_domain_id

    t_start = time.perf_counter()
    out = Path(args.out)
    data, why = choose_data(args.data)
    if not (data / "ir").is_dir() or not (data / "vi").is_dir():
        print(f"mafs demo: error: no MSRS pairs at {data} ({why}; expected {data}/ir and {data}/vi); "
              "pass --data DIR or set MAFS_DATA")
        return 2
    _say("data", f"pairs from {data} ({why})")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("input_bag", "output_bag", "eval", "report.md", "montage.png", "node.log", "summary.json"):
        p = out / stale
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    env = configure_ros_env(domain_id=unique_domain_id(), log_dir=out / "ros_log")
    steps: list[str] = []

    try:
        checkpoint, weights_desc = resolve_checkpoint(args, out)
    except FileNotFoundError as exc:
        print(f"mafs demo: error: {exc}\n(the demo needs trained weights; `mafs demo --random-init mafs_t` "
              "runs the same pipeline with an untrained network, for development)")
        return 2
    _say("1/6", f"weights: {weights_desc}")

    names = pick_frames(data / "ir", args.frames)
    if len(names) < args.frames:
        _say("data", f"{data} holds {len(names)} pairs, fewer than --frames {args.frames}: using all of them")
    info = make_bag(data / "ir", data / "vi", out / "input_bag",
                    cfg=MakeConfig(rate=RATE_HZ, thermal_offset_ms=THERMAL_OFFSET_S * 1e3, storage="mcap"),
                    names=names)
    n_day = sum(x.endswith("D") for x in names)
    steps.append(f"Built `input_bag/` (mcap): {info['frames']} MSRS pairs ({n_day} day, {len(names) - n_day} night) "
                 f"at {RATE_HZ:g} Hz, 3 ms stamp jitter, thermal stamps 15 ms after RGB; topics "
                 f"`{THERMAL_TOPIC}` (mono8), `{RGB_TOPIC}` (bgr8). Pairs from `{data}` ({why}).")
    _say("2/6", steps[-1])

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from mafs_ros.bag_play import BagPlayer, PlayOptions

    node_log = out / "node.log"
    proc = _start_node(checkpoint, node_log, args.device, list(getattr(args, "node_param", None) or []))
    steps.append(f"Started the node: `python -m mafs_ros.node` in namespace /mafs, inputs remapped to the bag topics, "
                 f"use_sim_time, sync.thermal_time_offset={-THERMAL_OFFSET_S} (ROS_DOMAIN_ID "
                 f"{env.get('ROS_DOMAIN_ID')}, loopback DDS); its log is `node.log`.")
    _say("3/6", steps[-1])

    rclpy.init()
    node = rclpy.create_node("mafs_demo", parameter_overrides=[Parameter("use_sim_time", value=True)])
    rec = Recorder(node, out / "output_bag", OUTPUT_TOPICS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    mask_topic = OUTPUT_TOPICS["mask"]
    published: dict[str, dict[int, float]] = {THERMAL_TOPIC: {}, RGB_TOPIC: {}}
    timeouts = 0
    rc = 0
    try:
        deadline = time.monotonic() + args.startup_timeout
        while node.count_publishers(mask_topic) == 0 or node.count_subscribers(RGB_TOPIC) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"mafs demo: error: the node did not come up (exit code {proc.poll()}); last lines of "
                      f"{node_log}:\n{_tail(node_log)}")
                return 1
            time.sleep(0.1)
        t_ready = time.perf_counter()
        _say("4/6", f"node up after {t_ready - t_start:.1f} s (model loaded, warmed up, subscribed); playing the bag")

        def on_publish(topic: str, log_ns: int, data: bytes, wall: float) -> None:
            published[topic][log_ns] = wall  # log time = header stamp in bags made by `mafs bag make`

        def gate(topic: str, log_ns: int) -> None:
            """Hold each RGB frame until the node has answered the previous pair (flow control)."""
            nonlocal timeouts
            if topic != RGB_TOPIC:
                return
            sent = len(published[RGB_TOPIC])
            if sent and not rec.wait_count(mask_topic, sent, args.frame_timeout):
                timeouts += 1

        player = BagPlayer(node, out / "input_bag",
                           PlayOptions(rate=1.0, clock=100.0, topics=[THERMAL_TOPIC, RGB_TOPIC],
                                       wait_for_subscribers=1, wait_timeout=args.startup_timeout),
                           on_publish=on_publish, gate=gate)
        t_play = time.perf_counter()
        player.play()
        rec.wait_count(mask_topic, len(published[RGB_TOPIC]), args.frame_timeout)
        time.sleep(0.3)  # the colour/overlay of the last frame follow the mask
        t_end = time.perf_counter()
        # The node's diagnostics timer runs on bag time, which stands still now: step /clock on so it
        # reports its final counters (processed, dropped) once more.
        last = max(published[RGB_TOPIC] | published[THERMAL_TOPIC], default=0)
        for k in range(1, 4):
            player._publish_clock(last + int(k * 1.1e9))
            time.sleep(0.3)
        n_out = rec.count(mask_topic)
        steps.append(f"Replayed the bag with the rclpy bag player (`mafs bag play` code, /clock at 100 Hz, "
                     f"flow-controlled): {len(published[RGB_TOPIC])} RGB + {len(published[THERMAL_TOPIC])} thermal "
                     f"images published; the node answered {n_out} pairs in {t_end - t_play:.1f} s.")
        _say("5/6", steps[-1])
    finally:
        _stop_node(proc)
        executor.shutdown(timeout_sec=2)
        rec.writer.close()
        node.destroy_node()
        rclpy.try_shutdown()

    # ---- scoring, montage, report
    report = _score(rec, published, names, data, out, t_end - t_play, weights_desc, info, steps, timeouts)
    report["wall_s"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(_markdown(report, steps))
    _say("6/6", f"scored {report['pairs_processed']} fused frames; wrote {out}/report.md, montage.png, "
                f"input_bag/, output_bag/ (total {report['wall_s']:.0f} s)")
    lat = report["latency_ms"]
    print(f"\nMAFS demo: {report['pairs_processed']}/{report['pairs_published']} pairs, "
          f"{report['fps']:.2f} frames/s, latency p50 {lat.get('p50', float('nan')):.0f} ms / "
          f"p99 {lat.get('p99', float('nan')):.0f} ms, on {report['device']}. See {out}/report.md")
    if report["pairs_processed"] == 0:
        print(f"mafs demo: error: the node produced no output; last lines of {node_log}:\n{_tail(node_log)}")
        rc = 1
    return rc


def _score(rec: Recorder, published: dict, names: list[str], data: Path, out: Path, play_s: float,
           weights_desc: str, info: dict, steps: list[str], timeouts: int) -> dict:
    """Fusion metrics over the recorded outputs (the `mafs eval` Evaluator) and the montage."""
    from mafs_core.bagio import BagReader
    from mafs_core.classes import MSRS_CLASSES, MSRS_PALETTE
    from mafs_core.evaluate import Evaluator, condition_of
    from mafs_core.io import read_ir, read_vis
    from mafs_core.report import Sample, plot_samples

    with BagReader(out / "input_bag") as r:
        manifest = r.manifest()
    th_stamps = np.array(sorted(published[THERMAL_TOPIC]), np.int64)
    masks = rec.recv[OUTPUT_TOPICS["mask"]]
    latencies = []
    for stamp, (wall, _) in masks.items():
        # the pair completes when its second image is out: the RGB frame or its thermal partner
        partner = th_stamps[np.argmin(np.abs(th_stamps - (stamp + int(THERMAL_OFFSET_S * 1e9))))] \
            if len(th_stamps) else stamp
        t_in = max(published[RGB_TOPIC].get(stamp, wall), published[THERMAL_TOPIC].get(int(partner), 0.0))
        latencies.append((wall - t_in) * 1e3)
    ev = Evaluator(list(MSRS_CLASSES), np.array(MSRS_PALETTE, np.uint8), num_samples=6, thumb_width=320)

    def decode(topic: str, stamp: int):
        item = rec.recv[topic].get(stamp)
        return None if item is None else image_to_array(rec.writer.typestore.deserialize_cdr(item[1], IMAGE))

    for stamp in sorted(masks):
        name = manifest.get(stamp, str(stamp))
        fused, mask = decode(OUTPUT_TOPICS["fused"], stamp), decode(OUTPUT_TOPICS["mask"], stamp)
        if fused is None or mask is None:
            continue
        res = SimpleNamespace(fused_bgr=fused, mask=mask, overlay=decode(OUTPUT_TOPICS["overlay"], stamp), timings={})
        ev.add(name, read_ir(data / "ir" / f"{name}.png"), read_vis(data / "vi" / f"{name}.png"), res)
    rep = ev.finish(out / "eval", {"source": "node outputs recorded over DDS", "weights": weights_desc})
    samples = [Sample(f"{s.name} ({condition_of(s.name) or '?'})", s.ir, s.vis_bgr, s.fused_bgr, s.overlay_bgr)
               for s in ev.samples()]
    if samples:
        plot_samples(out / "montage.png", samples)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    n = len(masks)
    return {"pairs_published": len(published[RGB_TOPIC]), "pairs_processed": n, "frame_timeouts": timeouts,
            "fps": n / play_s if play_s > 0 else 0.0, "play_s": play_s,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                           "mean": float(np.mean(lat))} if latencies else {},
            "device": rec.diagnostics.get("device", "cpu" if not _cuda() else "cuda"),
            "node_diagnostics": rec.diagnostics, "weights": weights_desc, "frames": info["frames"],
            "fusion": rep.get("fusion", {}), "fusion_by_condition": rep.get("fusion_by_condition", {}),
            "predicted_class_fraction": rep.get("predicted_class_fraction", {}),
            "output_counts": {t: len(v) for t, v in rec.recv.items()}}


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _markdown(r: dict, steps: list[str]) -> str:
    from mafs_core.report import fusion_table

    lat = r["latency_ms"]
    lines = ["# MAFS-ROS demo", "",
             f"Weights: {r['weights']}. Device: {r['device']}. Total wall time {r['wall_s']:.0f} s.", "",
             "## What it did", ""] + [f"{i}. {s}" for i, s in enumerate(steps, 1)] + [
             f"{len(steps) + 1}. Scored the recorded fused images against their IR/VIS sources with the "
             "`mafs eval` metrics (full tables in `eval/report.md`) and drew `montage.png`.", "",
             "## Results", "",
             "| | |", "|---|---|",
             f"| pairs published / processed | {r['pairs_published']} / {r['pairs_processed']} |",
             f"| throughput (node, over DDS) | {r['fps']:.2f} frames/s |"]
    if lat:
        lines.append(f"| end-to-end latency p50 / p99 | {lat['p50']:.0f} / {lat['p99']:.0f} ms |")
    lines += [f"| output messages | {r['output_counts']} |", ""]
    if r["frame_timeouts"]:
        lines += [f"**{r['frame_timeouts']} frame(s) got no answer within the timeout** (see node.log).", ""]
    lines += ["Latency: from the publication of a pair's second image to the arrival of its mask, both in this "
              "process (DDS loopback both ways, model inference in between). Throughput counts the node's answers "
              "over the playback time; the player waits for each answer, so it is the node's own pace.", ""]
    if r["fusion"]:
        lines += ["## Fusion metrics (mean over the processed frames)", "", fusion_table(r["fusion"]), ""]
        for cond, block in r["fusion_by_condition"].items():
            lines += [f"### {cond} ({block['num_images']} frames)", "", fusion_table(block["fusion"]), ""]
    lines += ["## Montage", "", "![IR | VIS | fused | overlay](montage.png)", "",
              "## Files", "",
              "- `input_bag/`: the bag that was played (mcap)",
              "- `output_bag/`: what the node published, recorded as received: "
              + ", ".join(f"`{t}`" for t in OUTPUT_TOPICS.values()),
              "- `eval/`: report.json / report.md / samples.png of the fused outputs",
              "- `node.log`, `summary.json`", "",
              "Open both bags in Foxglove Studio (or `ros2 bag play` them into rviz2) to see inputs and outputs "
              "side by side: the outputs carry the RGB frames' stamps and frame_id.", "",
              "On a ROS 2 install the same run is: `ros2 launch mafs_ros mafs.launch.py` with the inputs remapped, "
              "then `ros2 bag play input_bag --clock`; see docs/bags.md.", ""]
    return "\n".join(lines)


def register(subparsers, registry: dict) -> None:
    p = subparsers.add_parser("demo", help="end-to-end demo: bag -> node over DDS -> recorded outputs + report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="MSRS-style folder with ir/ and vi/ (default: $MAFS_DATA, else ../shared/data/msrs, "
                   "else the committed samples in data/samples/msrs)")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--frames", type=int, default=40, help="number of pairs, half day half night (default 40)")
    p.add_argument("--checkpoint", help="weights for the node (default: shipped weights/mafs_t.safetensors)")
    p.add_argument("--random-init", nargs="?", const="mafs_t", metavar="VARIANT",
                   help="use an untrained seeded network when no weights exist yet (development only)")
    p.add_argument("--device", default="auto", help="model.device of the node (auto, cpu, cuda)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the node to come up")
    p.add_argument("--frame-timeout", type=float, default=60.0, help="seconds to wait for the node's answer")
    p.add_argument("--node-param", action="append", metavar="NAME:=VALUE",
                   help="extra node parameter, e.g. model.input_size:=320x256 (repeatable)")
    p.set_defaults(func=run_demo)
