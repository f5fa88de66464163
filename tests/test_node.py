"""The node in-process (executor thread) against a probe node, over real rclpy/DDS.

Each test uses its own namespace. The engine is an untrained mafs_t on CPU (speed is not tested here).
"""

from __future__ import annotations

import array
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy wheels not installed")
import yaml  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import make_image, wait_for  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from mafs_ros import params, sync  # noqa: E402
from mafs_ros.diagnostics import to_dict  # noqa: E402
from mafs_ros.node import MafsNode  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
H, W = 64, 80
FAST = {"model.warmup_iterations": 0, "diagnostics.period": 0.2, "max_pair_age": 10.0}
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(b not in sync.available_backends(),
                                                     reason=f"{b} not importable here (no ROS distribution)"))
            for b in ("message_filters", "builtin")]


def tiny_engine(_p=None):
    import torch

    from mafs_core.engine import FusionSegmenter

    torch.set_num_threads(1)
    return FusionSegmenter.from_variant("mafs_t", device="cpu", warmup=0)


@pytest.fixture(scope="module", autouse=True)
def ros_context() -> Iterator[None]:
    rclpy.init()
    yield
    rclpy.shutdown()


class Harness:
    """The node under test plus a probe node (publishes inputs, records outputs) on one spinning executor."""

    def __init__(self, ns: str, overrides: dict | None = None, cli_args: list[str] | None = None,
                 engine_factory=tiny_engine, autostart: bool = True):
        values = {**FAST, **(overrides or {})}
        self.node = MafsNode(namespace=ns, engine_factory=engine_factory, cli_args=cli_args,
                             parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        self.probe = rclpy.create_node("probe", namespace=ns)
        self.thermal_pub = self.probe.create_publisher(Image, "thermal/image", RELIABLE)
        self.rgb_pub = self.probe.create_publisher(Image, "rgb/image", RELIABLE)
        self.info_pub = self.probe.create_publisher(CameraInfo, "rgb/camera_info", RELIABLE)
        self.got: dict[str, list] = {t: [] for t in ("fused/image", "segmentation/mask", "segmentation/color",
                                                     "segmentation/overlay", "fused/camera_info",
                                                     "segmentation/camera_info")}
        for topic, store in self.got.items():
            msg_type = CameraInfo if topic.endswith("camera_info") else Image
            self.probe.create_subscription(msg_type, topic, store.append, RELIABLE)
        self.diags: list[dict] = []
        fqn = self.node.get_fully_qualified_name()
        self.probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diags.extend(
            {"message": s.message, "level": s.level, **to_dict(s)} for s in m.status if s.hardware_id == fqn), 50)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        if autostart:
            assert self.node.autostart(), "autostart failed"
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait_connected(self, outputs: tuple[str, ...] = ("fused", "mask")) -> None:
        wait_for(lambda: self.thermal_pub.get_subscription_count() > 0 and self.rgb_pub.get_subscription_count() > 0
                 and all(self.node._pubs[k].get_subscription_count() > 0 for k in outputs), 20, "discovery")

    def send_pair(self, k: int, thermal_dt: float = 0.0, rgb_encoding: str = "bgr8") -> int:
        rng = np.random.default_rng(k)
        stamp = self.probe.get_clock().now().nanoseconds
        th = rng.integers(0, 65535, (H, W), dtype=np.uint16)
        rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        self.thermal_pub.publish(make_image(th, "mono16", stamp + round(thermal_dt * 1e9), f"thermal_{k}"))
        self.rgb_pub.publish(make_image(rgb, rgb_encoding, stamp, f"rgb_{k}"))
        return stamp

    def last_diag(self, timeout: float = 5.0) -> dict:
        n = len(self.diags)
        wait_for(lambda: len(self.diags) > n, timeout, "a diagnostics message")
        return self.diags[-1]

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.thread.join(5)
        self.node.stop()
        self.node.destroy_node()
        self.probe.destroy_node()


@contextmanager
def harness(ns: str, **kwargs) -> Iterator[Harness]:
    h = Harness(ns, **kwargs)
    try:
        yield h
    finally:
        h.close()


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


# ---------------------------------------------------------------- data path


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_pair_gives_every_output_with_the_rgb_header(backend: str) -> None:
    n = 8
    with harness(f"/t_pairs_{backend}", overrides={"sync.backend": backend}) as h:
        h.wait_connected(("fused", "mask", "color", "overlay"))
        info = CameraInfo(height=H, width=W, distortion_model="plumb_bob", k=[50.0, 0, 40, 0, 50, 32, 0, 0, 1])
        h.info_pub.publish(info)
        time.sleep(0.2)
        stamps = []
        for k in range(n):  # lock-step: the node keeps only the newest pair, so wait for each output
            stamps.append(h.send_pair(k, rgb_encoding=("bgr8", "rgb8", "mono8")[k % 3]))
            wait_for(lambda k=k: all(len(v) > k for v in h.got.values()), 30, f"outputs of pair {k}")
        for topic, msgs in h.got.items():
            assert [m.header.frame_id for m in msgs] == [f"rgb_{k}" for k in range(n)], topic
            assert [stamp_of(m) for m in msgs] == stamps, topic
        for m in h.got["fused/image"] + h.got["segmentation/overlay"]:
            assert (m.encoding, m.height, m.width, len(m.data)) == ("bgr8", H, W, H * W * 3)
        for m in h.got["segmentation/color"]:
            assert (m.encoding, m.height, m.width) == ("rgb8", H, W)
        mask = h.got["segmentation/mask"][-1]
        assert mask.encoding == "mono8" and max(mask.data) < 9
        assert list(h.got["fused/camera_info"][0].k) == list(info.k)
        d = h.last_diag()
        assert d["sync_backend"] == backend and int(d["pairs"]) == n and int(d["processed"]) == n
        assert d["received.thermal"] == d["received.rgb"] == str(n) and d["unmatched.rgb"] == "0"
        assert float(d["latency_ms.p50"]) > 0 and "engine.total_ms.p50" in d and "overhead_ms.p99" in d


@pytest.mark.timeout(90)
def test_colour_and_overlay_only_for_subscribers() -> None:
    with harness("/t_lazy") as h:
        for sub in [s for s in h.probe.subscriptions if s.topic_name.endswith(("/color", "/overlay"))]:
            h.probe.destroy_subscription(sub)
        h.wait_connected()
        wait_for(lambda: h.node._pubs["color"].get_subscription_count() == 0, 10, "unsubscribe")
        h.send_pair(0)
        wait_for(lambda: h.got["segmentation/mask"], 30, "mask")
        time.sleep(0.2)
        assert h.got["segmentation/color"] == [] and h.got["segmentation/overlay"] == []


@pytest.mark.timeout(90)
def test_thermal_offset_pairs_shifted_stamps_and_mismatch_is_reported() -> None:
    with harness("/t_offset", overrides={"sync.slop": 0.01}) as h:
        h.wait_connected()
        for k in range(3):  # thermal clock 0.3 s ahead: nothing pairs
            h.send_pair(k, thermal_dt=0.3)
            time.sleep(0.1)
        d = h.last_diag()
        d = h.last_diag()
        assert "stamps differ by 0.300 s, more than slop" in d["message"], d["message"]
        assert d["pairs"] == "0" and h.got["fused/image"] == []
        res = h.node.set_parameters([Parameter("sync.thermal_time_offset", value=-0.3)])
        assert res[0].successful
        for k in range(3, 6):
            stamp = h.send_pair(k, thermal_dt=0.3)
            wait_for(lambda k=k: len(h.got["fused/image"]) > k - 3, 30, f"pair {k}")
            assert stamp_of(h.got["fused/image"][-1]) == stamp
        d = h.last_diag()
        assert int(d["pairs"]) == 3 and abs(float(d["stamp_diff_s.mean"])) < 1e-6


@pytest.mark.timeout(60)
def test_silent_stream_is_named_in_diagnostics() -> None:
    with harness("/t_silent", overrides={"diagnostics.silent_timeout": 0.5}) as h:
        h.wait_connected()
        rgb = np.zeros((H, W, 3), np.uint8)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            h.rgb_pub.publish(make_image(rgb, "bgr8", h.probe.get_clock().now().nanoseconds, "rgb"))
            time.sleep(0.05)
        d = h.last_diag()
        assert "no message on /t_silent/thermal/image" in d["message"] and "/t_silent/rgb/image flows" in d["message"]
        assert d["level"] == b"\x01"  # WARN
        assert int(d["received.rgb"]) > 10 and d["received.thermal"] == "0"


@pytest.mark.timeout(120)
def test_malformed_messages_are_counted_and_the_node_carries_on() -> None:
    overrides = {"qos.input_depth": 600, "qos.input_reliability": "reliable"}
    with harness("/t_bad", overrides=overrides) as h:
        h.wait_connected()
        good = np.zeros((H, W, 3), np.uint8)
        bad: list[tuple[str, Image]] = []
        for i in range(500):
            stamp = h.probe.get_clock().now().nanoseconds
            m = make_image(good, "bgr8", stamp, "bad")
            kind = i % 5
            if kind == 0:
                m.encoding = "yuv422"
            elif kind == 1:
                m.data = m.data[:-7]
            elif kind == 2:
                m.height, m.width, m.step, m.data = 0, 0, 0, array.array("B")
            elif kind == 3:
                m.step = 10  # less than a row
            else:
                m.encoding = "mono16"  # valid size, wrong encoding for rgb but also bad: odd row bytes for 16 bit
                m.width = W * 3 // 2 + 1
            bad.append(("thermal" if i % 2 else "rgb", m))
        for i, (stream, m) in enumerate(bad):
            (h.thermal_pub if stream == "thermal" else h.rgb_pub).publish(m)
            if i % 50 == 49:
                time.sleep(0.05)
        n_thermal = sum(s == "thermal" for s, _ in bad)
        wait_for(lambda: h.diags and int(h.diags[-1].get("bad_input.total", 0)) >= 500, 30, "all 500 counted")
        # a NaN thermal frame is sanitised (counted), then a good pair is processed
        stamp = h.probe.get_clock().now().nanoseconds
        nan_th = np.full((H, W), 300.0, np.float32)
        nan_th[:4] = np.nan
        h.thermal_pub.publish(make_image(nan_th, "32FC1", stamp, "nan"))
        h.rgb_pub.publish(make_image(good, "bgr8", stamp, "after_nan"))
        wait_for(lambda: h.got["fused/image"], 30, "output after bad input")
        h.send_pair(1)
        wait_for(lambda: len(h.got["fused/image"]) == 2, 30, "second good output")
        d = h.last_diag()
        assert int(d["bad_input.thermal"]) == n_thermal and int(d["bad_input.rgb"]) == 500 - n_thermal
        assert d["nonfinite_frames"] == "1" and d["errors"] == "0" and d["processed"] == "2"
        assert [m.header.frame_id for m in h.got["fused/image"]] == ["after_nan", "rgb_1"]


@pytest.mark.timeout(60)
def test_class_info_is_latched() -> None:
    with harness("/t_classes") as h:
        time.sleep(0.3)  # published at activation, long before this subscriber exists
        got: list[String] = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        h.probe.create_subscription(String, "segmentation/class_info", got.append, latched)
        wait_for(lambda: got, 10, "class_info")
        info = json.loads(got[0].data)
        assert info["num_classes"] == 9 and info["class_names"][2] == "person"
        assert len(info["palette"]) == 9 and info["palette"][1] == [64, 0, 128]
        assert info["mask_topic"] == "/t_classes/segmentation/mask"


# ---------------------------------------------------------------- parameters and lifecycle


def test_shipped_params_file_declares_every_parameter_and_loads(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "config" / "mafs.yaml").read_text())
    assert list(cfg) == ["/**"], "keyed with the /** wildcard"
    keys = set(cfg["/**"]["ros__parameters"])
    flat = set()
    for k, v in cfg["/**"]["ros__parameters"].items():  # nested or dotted keys are both valid ROS 2 YAML
        flat |= {f"{k}.{kk}" for kk in v} if isinstance(v, dict) else {k}
    assert flat == {s.name for s in params.SPECS}, flat ^ {s.name for s in params.SPECS}
    assert keys
    node = MafsNode(namespace="/t_yaml", engine_factory=tiny_engine,
                    cli_args=["--ros-args", "--params-file", str(REPO / "config" / "mafs.yaml")])
    try:
        assert node._param_errors == {}
        for s in params.SPECS:
            assert node.get_parameter(s.name).value == s.default or s.name == "model.checkpoint", s.name
    finally:
        node.destroy_node()


def test_params_file_values_and_integer_for_double(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "sync": {"slop": 1, "queue_size": 7, "backend": "builtin"}, "max_pair_age": 0.25,
        "qos": {"input_reliability": "reliable"}}}}))
    node = MafsNode(namespace="/t_pfile", engine_factory=tiny_engine, cli_args=["--ros-args", "--params-file", str(f)])
    try:
        assert node._param_errors == {}
        p = params.NodeParams.from_node(node)
        assert (p.sync_slop, p.sync_queue_size, p.sync_backend, p.max_pair_age) == (1.0, 7, "builtin", 0.25)
        assert p.qos_input_reliability == "reliable"
    finally:
        node.destroy_node()


def test_bad_parameters_fail_configure_naming_them(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "sync": {"slop": -1.0, "backend": "bogus", "queue_size": "ten"},
        "thermal": {"low_percentile": 90.0, "high_percentile": 10.0},
        "model": {"checkpoint": str(tmp_path / "missing.safetensors")}}}}))
    node = MafsNode(namespace="/t_badp", engine_factory=tiny_engine, cli_args=["--ros-args", "--params-file", str(f)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node._state_machine.current_state[1] == "unconfigured"
        text = "\n".join(node.configure_errors)
        for name in ("'sync.slop' = -1.0", "'sync.backend' = 'bogus'", "'sync.queue_size' = 'ten'",
                     "'thermal.low_percentile'", "'model.checkpoint'", "missing.safetensors"):
            assert name in text, (name, text)
        # runtime: range (rclpy, from the descriptor) and choices (our callback) are enforced
        assert not node.set_parameters([Parameter("sync.queue_size", value=0)])[0].successful
        r = node.set_parameters([Parameter("qos.input_reliability", value="sometimes")])[0]
        assert not r.successful and "best_effort, reliable" in r.reason
        assert not node.set_parameters([Parameter("registration.homography", value=[1.0, 2.0])])[0].successful
        assert node.set_parameters([Parameter("sync.slop", value=0.2)])[0].successful
    finally:
        node.destroy_node()


def test_unloadable_model_leaves_node_unconfigured(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    node = MafsNode(namespace="/t_model", parameter_overrides=[Parameter("model.checkpoint", value=str(bad))])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node._state_machine.current_state[1] == "unconfigured"
        assert "cannot load the model" in node.configure_errors[-1] and "corrupt.safetensors" in str(
            node.configure_errors)
        # fixed: configure succeeds on the next try, without restarting the node
        node.engine_factory = tiny_engine
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    finally:
        node.stop()
        node.destroy_node()


@pytest.mark.timeout(60)
def test_deactivate_releases_engine_and_reactivate_works() -> None:
    with harness("/t_cycle") as h:
        h.wait_connected()
        h.send_pair(0)
        wait_for(lambda: h.got["fused/image"], 30, "first output")
        engine = h.node.engine
        assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert engine._released and h.node.engine is None
        assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        h.wait_connected()
        h.send_pair(1)
        wait_for(lambda: len(h.got["fused/image"]) == 2, 30, "output after re-activation")
