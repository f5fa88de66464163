"""The node as its own process (`mafs_ros.node.main`, spawned): lifecycle services, and overload behaviour."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy wheels not installed")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import make_image, wait_for  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from mafs_ros.diagnostics import to_dict  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)


# ---------------------------------------------------------------- spawned side


class SlowEngine:
    """A real (untrained, tiny) engine made to take ``delay_s`` per frame: the 'deliberately slow model'."""

    def __init__(self, delay_s: float):
        import torch

        from mafs_core.engine import FusionSegmenter

        torch.set_num_threads(1)
        self.inner = FusionSegmenter.from_variant("mafs_t", device="cpu", warmup=0)
        self.delay_s = delay_s

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def run(self, *args, **kwargs):
        t0 = time.perf_counter()
        result = self.inner.run(*args, **kwargs)
        time.sleep(max(0.0, self.delay_s - (time.perf_counter() - t0)))
        result.timings["total"] = (time.perf_counter() - t0) * 1e3
        return result


def _slow_factory(_params) -> SlowEngine:
    return SlowEngine(0.05)


def _node_main(args: list[str], slow: bool) -> None:
    from mafs_ros.node import main

    main(args, engine_factory=_slow_factory if slow else None)


# ---------------------------------------------------------------- test side


@pytest.fixture(scope="module")
def ros() -> Iterator[tuple]:
    rclpy.init()
    probe = rclpy.create_node("probe_proc")
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield probe
    executor.shutdown(timeout_sec=5)
    thread.join(5)
    probe.destroy_node()
    rclpy.shutdown()


@contextmanager
def node_process(args: list[str], slow: bool = False) -> Iterator[mp.Process]:
    proc = mp.get_context("spawn").Process(target=_node_main, args=(args, slow), daemon=True)
    proc.start()
    try:
        yield proc
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGINT)
            proc.join(15)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def call(probe, client, request, timeout: float = 60.0):
    assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
    future = client.call_async(request)
    wait_for(future.done, timeout, f"reply from {client.srv_name}")
    return future.result()


@pytest.mark.timeout(150)
def test_lifecycle_transitions_over_services(ros, tmp_path: Path) -> None:
    from mafs_core.checkpoint import save_checkpoint
    from mafs_core.model import build_model

    ckpt = tmp_path / "untrained_mafs_t.safetensors"
    save_checkpoint(ckpt, build_model("mafs_t"), {"variant": "mafs_t"})
    probe = ros
    ns = "/t_lifecycle"
    args = ["--ros-args", "--params-file", str(REPO / "config" / "mafs.yaml"), "-r", f"__ns:={ns}",
            "-p", "autostart:=false", "-p", f"model.checkpoint:={ckpt}", "-p", "model.device:=cpu",
            "-p", "model.warmup_iterations:=1"]
    get_state = probe.create_client(GetState, f"{ns}/mafs_node/get_state")
    change = probe.create_client(ChangeState, f"{ns}/mafs_node/change_state")
    outputs: list[Image] = []
    probe.create_subscription(Image, f"{ns}/segmentation/mask", outputs.append, RELIABLE)
    thermal_pub = probe.create_publisher(Image, f"{ns}/thermal/image", RELIABLE)
    rgb_pub = probe.create_publisher(Image, f"{ns}/rgb/image", RELIABLE)

    def state() -> str:
        return call(probe, get_state, GetState.Request()).current_state.label

    def transition(tid: int) -> bool:
        return call(probe, change, ChangeState.Request(transition=Transition(id=tid))).success

    with node_process(args) as proc:
        assert state() == "unconfigured"  # autostart:=false
        assert transition(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
        assert thermal_pub.get_subscription_count() == 0  # no subscriptions while inactive
        assert transition(Transition.TRANSITION_ACTIVATE) and state() == "active"
        wait_for(lambda: thermal_pub.get_subscription_count() and rgb_pub.get_subscription_count(), 20, "subs")
        for attempt in range(5):  # inputs are best effort: allow a lost first message
            stamp = probe.get_clock().now().nanoseconds
            thermal_pub.publish(make_image(np.zeros((48, 64), np.uint8), "mono8", stamp, "th"))
            rgb_pub.publish(make_image(np.zeros((48, 64, 3), np.uint8), "bgr8", stamp, f"rgb{attempt}"))
            deadline = time.monotonic() + 5
            while not outputs and time.monotonic() < deadline:
                time.sleep(0.02)
            if outputs:
                break
        assert outputs and outputs[0].header.frame_id.startswith("rgb")
        assert transition(Transition.TRANSITION_DEACTIVATE) and state() == "inactive"
        wait_for(lambda: thermal_pub.get_subscription_count() == 0, 10, "unsubscribe on deactivate")
        assert transition(Transition.TRANSITION_CLEANUP) and state() == "unconfigured"
        assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and state() == "finalized"
        assert proc.is_alive()
    assert State.PRIMARY_STATE_FINALIZED == 4


@pytest.mark.timeout(150)
def test_overload_keeps_latency_bounded_and_memory_flat(ros) -> None:
    """60 Hz of 120x160 pairs into a 50 ms model: the newest pair wins, nothing piles up."""
    probe = ros
    ns = "/t_overload"
    args = ["--ros-args", "-r", f"__ns:={ns}", "-p", "model.warmup_iterations:=0", "-p", "diagnostics.period:=0.5",
            "-p", "max_pair_age:=0.0"]
    latencies: list[tuple[float, float]] = []  # (receive time, latency s)
    probe.create_subscription(Image, f"{ns}/fused/image", lambda m: latencies.append(
        (time.time(), time.time() - m.header.stamp.sec - m.header.stamp.nanosec * 1e-9)), RELIABLE)
    diags: list[dict] = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diags.extend(
        to_dict(s) for s in m.status if s.hardware_id == f"{ns}/mafs_node"), 10)
    thermal_pub = probe.create_publisher(Image, f"{ns}/thermal/image", RELIABLE)
    rgb_pub = probe.create_publisher(Image, f"{ns}/rgb/image", RELIABLE)
    rng = np.random.default_rng(0)
    th = rng.integers(0, 65535, (120, 160), dtype=np.uint16)
    rgb = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    with node_process(args, slow=True) as proc:
        wait_for(lambda: thermal_pub.get_subscription_count() and rgb_pub.get_subscription_count(), 90, "node up")
        rss: list[tuple[float, float]] = []
        t_start = time.monotonic()
        duration, period, k = 8.0, 1 / 60, 0
        while (now := time.monotonic()) - t_start < duration:
            stamp = time.time_ns()
            thermal_pub.publish(make_image(th, "16UC1", stamp, f"t{k}"))
            rgb_pub.publish(make_image(rgb, "rgb8", stamp, f"r{k}"))
            if k % 15 == 0:
                rss.append((now - t_start, rss_mb(proc.pid)))
            k += 1
            time.sleep(max(0.0, t_start + k * period - time.monotonic()))
        sent = k
        time.sleep(1.0)
        assert proc.is_alive()
    lat = np.array([x for _, x in latencies])
    t_rx = np.array([t for t, _ in latencies])
    assert len(lat) > 40, f"only {len(lat)} outputs for {sent} pairs"
    late = lat[t_rx >= t_rx[0] + 4]  # second half of the run
    assert np.percentile(lat, 99) < 0.5 and late.max() < 0.5, f"latency grows: p99 {np.percentile(lat, 99):.3f} s"
    assert np.median(late) < np.median(lat[: len(lat) // 2]) + 0.05, "latency trend upwards: a backlog"
    r = np.array(rss)
    early, tail = r[(r[:, 0] > 2) & (r[:, 0] < 4), 1], r[r[:, 0] > 6, 1]
    assert tail.max() - np.median(early) < 25, f"RSS grows: {r[:, 1].round(1).tolist()} MB"
    d = diags[-1]
    dropped = int(d["dropped.replaced"])
    assert dropped > 0.3 * sent and int(d["processed"]) + dropped + int(d["dropped.stale"]) <= int(d["pairs"])
    print(f"\noverload: {sent} pairs in, {len(lat)} out, {dropped} replaced; latency p50 {np.median(lat) * 1e3:.0f} "
          f"ms p99 {np.percentile(lat, 99) * 1e3:.0f} ms; RSS {r[0, 1]:.0f}->{r[-1, 1]:.0f} MB")
