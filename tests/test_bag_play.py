"""`mafs bag play` over real DDS: every image arrives bit-exact, in order, with /clock following bag time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_bag import write_fixture_pairs

from mafs_core.bag import RGB_TOPIC, THERMAL_TOPIC, MakeConfig, make_bag
from mafs_core.bagio import BagReader, BagWriter

rclpy = pytest.importorskip("rclpy", reason="rclpy wheels not installed")
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_play_publishes_images_and_clock(tmp_path: Path) -> None:
    src = write_fixture_pairs(tmp_path / "pairs", n=6, labels=False)
    bag = tmp_path / "bag"
    make_bag(src / "ir", src / "vi", bag, cfg=MakeConfig(rate=20))
    with BagReader(bag) as r:
        expected = {(f.topic, f.stamp_ns): f.image for f in r.frames([THERMAL_TOPIC, RGB_TOPIC])}

    rclpy.init()
    node = rclpy.create_node("play_listener")
    got: list[tuple[str, int, np.ndarray, float]] = []
    clocks: list[int] = []
    # reliable (the player publishes reliable, like `ros2 bag play`): "every image arrives" must not depend on a
    # best-effort reader losing the first sample while discovery completes on a loaded machine
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)

    def on_image(topic: str):
        def cb(m: Image) -> None:
            arr = np.frombuffer(m.data, np.uint8).reshape(m.height, m.width, -1).squeeze()
            got.append((topic, m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, arr, time.perf_counter()))
        return cb

    node.create_subscription(Image, THERMAL_TOPIC, on_image(THERMAL_TOPIC), qos)
    node.create_subscription(Image, RGB_TOPIC, on_image(RGB_TOPIC), qos)
    node.create_subscription(Clock, "/clock", lambda c: clocks.append(c.clock.sec * 10**9 + c.clock.nanosec), 100)
    player = subprocess.Popen([sys.executable, "-m", "mafs_ros.cli", "bag", "play", str(bag), "--clock", "50",
                               "--wait-for-subscribers", "1", "--topics", THERMAL_TOPIC, RGB_TOPIC],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while player.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.02)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.02)
        out = player.communicate(timeout=5)[0]
    finally:
        if player.poll() is None:
            player.kill()
        node.destroy_node()
        rclpy.shutdown()
    assert player.returncode == 0, out
    assert "published 12 messages" in out
    missing = sorted(set(expected) - {(t, s) for t, s, _, _ in got})
    assert len(got) == 12, f"{len(got)} of 12 images arrived; missing {missing}"
    for topic, stamp, arr, _ in got:
        assert np.array_equal(arr, expected[(topic, stamp)])
    stamps = [s for _, s, _, _ in got]
    assert stamps == sorted(stamps), "published in log-time order"
    # recorded timing: 6 frames at 20 Hz take ~0.25 s + the thermal offset, not 0 and not seconds
    span = got[-1][3] - got[0][3]
    assert 0.15 < span < 1.5, span
    # /clock: bag time, monotonic, from the first message's log time to the last
    assert len(clocks) >= 5 and clocks == sorted(clocks)
    assert min(clocks) >= min(stamps) - 1 and max(clocks) <= max(stamps) + 1 and max(clocks) == max(stamps)


def test_play_errors_name_the_problem(tmp_path: Path) -> None:
    src = write_fixture_pairs(tmp_path / "pairs", n=2, labels=False)
    bag = tmp_path / "bag"
    make_bag(src / "ir", src / "vi", bag)
    r = subprocess.run([sys.executable, "-m", "mafs_ros.cli", "bag", "play", str(bag), "--topics", "/nope"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "'/nope'" in r.stdout
    weird = tmp_path / "weird"
    with BagWriter(weird) as w:
        conn = w._writer.add_connection("/weird", "acme_msgs/msg/Blob", msgdef="uint8[] payload",
                                        rihs01="RIHS01_" + "0" * 64)
        w._writer.write(conn, 1, b"\x00\x01\x00\x00" + b"\x00" * 4)
    r = subprocess.run([sys.executable, "-m", "mafs_ros.cli", "bag", "play", str(weird), "--topics", "/weird"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown message type 'acme_msgs/msg/Blob'" in r.stdout
