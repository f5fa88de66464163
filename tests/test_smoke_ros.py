"""A real rclpy node exchanges a 640x480 image with a second process over DDS on loopback."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy wheels not installed")
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

ROUNDS = 20


def _echo(ready: mp.Event, stop: mp.Event) -> None:
    """Second process: republish every image it gets on /smoke/pong."""
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("smoke_echo")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Image, "/smoke/pong", qos)
    node.create_subscription(Image, "/smoke/ping", pub.publish, qos)
    ready.set()
    while not stop.is_set():
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()


@pytest.mark.timeout(90)
def test_image_round_trip_between_processes() -> None:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    echo = ctx.Process(target=_echo, args=(ready, stop), daemon=True)
    echo.start()
    assert ready.wait(30), "echo process did not start"

    rclpy.init()
    node = rclpy.create_node("smoke_ping")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Image, "/smoke/ping", qos)
    received: list[tuple[float, Image]] = []
    node.create_subscription(Image, "/smoke/pong", lambda m: received.append((time.perf_counter(), m)), qos)
    try:
        deadline = time.monotonic() + 20
        while pub.get_subscription_count() == 0 or node.count_publishers("/smoke/pong") == 0:
            rclpy.spin_once(node, timeout_sec=0.05)
            assert time.monotonic() < deadline, "processes never discovered each other"
        time.sleep(0.5)  # let the echo's subscription match ours as well

        rng = np.random.default_rng(0)
        latencies = []
        for i in range(ROUNDS):
            pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=pixels.tobytes())
            msg.header.frame_id = f"frame_{i}"
            sent = time.perf_counter()
            received.clear()
            pub.publish(msg)
            while not received and time.perf_counter() - sent < 5:
                rclpy.spin_once(node, timeout_sec=0.01)
            assert received, f"image {i} never came back"
            t, back = received[0]
            assert back.header.frame_id == f"frame_{i}"
            assert (back.height, back.width, back.encoding) == (480, 640, "rgb8")
            assert np.array_equal(np.frombuffer(back.data, np.uint8).reshape(480, 640, 3), pixels)
            latencies.append((t - sent) * 1e3)
        med = float(np.median(latencies))
        print(f"\n640x480 rgb8 round trip over DDS: median {med:.2f} ms, max {max(latencies):.2f} ms")
    finally:
        stop.set()
        echo.join(10)
        node.destroy_node()
        rclpy.shutdown()
