"""The node in-process (executor thread) against a probe node, over real rclpy/DDS.

Each test uses its own namespace. The engine is an untrained mafs_t on CPU (speed is not tested here).
"""

from __future__ import annotations

import array
import json
import os
import signal
import subprocess
import sys
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
                                                     "segmentation/overlay", "segmentation/confidence",
                                                     "fused/camera_info", "segmentation/camera_info")}
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

    def send_pair(self, k: int, thermal_dt: float = 0.0, rgb_encoding: str = "bgr8", size: tuple[int, int] = (H, W),
                  stamp: int | None = None) -> int:
        rng = np.random.default_rng(k)
        stamp = self.probe.get_clock().now().nanoseconds if stamp is None else stamp
        th = rng.integers(0, 65535, size, dtype=np.uint16)
        rgb = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        if rgb_encoding in ("bgra8", "rgba8"):  # the same colours with an alpha channel
            rgb = np.concatenate([rgb, rng.integers(0, 255, (*size, 1), dtype=np.uint8)], axis=2)
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
        h.wait_connected(("fused", "mask", "color", "overlay", "confidence"))
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
        for m in h.got["segmentation/confidence"]:  # max class probability: never below 1/9
            assert (m.encoding, m.height, m.width) == ("mono8", H, W) and min(m.data) >= 255 // 9
        assert list(h.got["fused/camera_info"][0].k) == list(info.k)
        d = h.last_diag()
        assert d["sync_backend"] == backend and int(d["pairs"]) == n and int(d["processed"]) == n
        assert d["received.thermal"] == d["received.rgb"] == str(n) and d["unmatched.rgb"] == "0"
        assert float(d["latency_ms.p50"]) > 0 and "engine.total_ms.p50" in d and "overhead_ms.p99" in d


@pytest.mark.timeout(90)
def test_colour_overlay_and_confidence_only_for_subscribers() -> None:
    with harness("/t_lazy") as h:
        for sub in [s for s in h.probe.subscriptions if s.topic_name.endswith(("/color", "/overlay", "/confidence"))]:
            h.probe.destroy_subscription(sub)
        h.wait_connected()
        wait_for(lambda: all(h.node._pubs[k].get_subscription_count() == 0 for k in ("color", "overlay", "confidence")),
                 10, "unsubscribe")
        h.send_pair(0)
        wait_for(lambda: h.got["segmentation/mask"], 30, "mask")
        time.sleep(0.2)
        assert h.got["segmentation/color"] == h.got["segmentation/overlay"] == h.got["segmentation/confidence"] == []


class PersonBoxEngine:
    """The tiny real engine whose mask is replaced by one person rectangle: known objects to publish."""

    def __init__(self) -> None:
        self.inner = tiny_engine()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def run(self, *args, **kwargs):
        res = self.inner.run(*args, **kwargs)
        res.mask[:] = 0
        res.mask[10:30, 20:50] = self.inner.class_names.index("person")
        return res


@pytest.mark.timeout(90)
def test_objects_from_the_mask_with_the_rgb_header() -> None:
    from mafs_ros import conversions

    with harness("/t_obj", engine_factory=lambda _p: PersonBoxEngine()) as h:
        got: list = []
        h.probe.create_subscription(conversions.objects_message_type(), "segmentation/objects", got.append, RELIABLE)
        wait_for(lambda: h.node._objects_pub.get_subscription_count() > 0, 20, "objects subscriber")
        h.wait_connected()
        h.send_pair(3)
        wait_for(lambda: got, 30, "objects")
        msg = got[0]
        if conversions.Detection2DArray is None:  # pip install: JSON in std_msgs/String
            d = json.loads(msg.data)
            assert d["header"]["frame_id"] == "rgb_3"
            (o,) = d["objects"]
            assert (o["class_name"], o["x"], o["y"], o["width"], o["height"], o["area"]) == \
                ("person", 20, 10, 30, 20, 600)
            assert 1 / 9 <= o["score"] <= 1.0
        else:  # a ROS install with vision_msgs
            assert msg.header.frame_id == "rgb_3" and len(msg.detections) == 1
            det = msg.detections[0]
            assert det.results[0].hypothesis.class_id == "person"
            assert (det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.size_x) == (35.0, 20.0, 30.0)


@pytest.mark.timeout(90)
def test_oversized_frames_are_refused_and_the_next_pair_is_answered() -> None:
    with harness("/t_big", overrides={"model.max_input_pixels": 10_000}) as h:  # 64x80 = 5120 px passes
        h.wait_connected()
        h.send_pair(0, size=(120, 160))  # 19 200 px: refused on arrival, never reaches the worker
        h.send_pair(1)
        wait_for(lambda: h.got["fused/image"], 30, "the normal pair's output")
        time.sleep(0.3)
        assert [m.header.frame_id for m in h.got["fused/image"]] == ["rgb_1"]
        d = h.last_diag()
        assert d["refused_oversize.thermal"] == d["refused_oversize.rgb"] == "1", d


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


def test_kelvin_x100_camera_in_degrees_celsius(tmp_path: Path) -> None:
    """A radiometric camera's Kelvin x 100 output with a 0-50 degC range: 27 degC (30015) -> 0.54."""
    from mafs_core.engine import EngineConfig
    from mafs_core.preprocess import ThermalNormalizer
    from mafs_ros.node import engine_overrides

    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"thermal": {
        "normalization": "fixed", "units": "kelvin_x100", "fixed_low": 0, "fixed_high": 50}}}}))
    node = MafsNode(namespace="/t_kelvin", engine_factory=tiny_engine, cli_args=["--ros-args", "--params-file", str(f)])
    try:
        p = params.NodeParams.from_node(node)
        assert node._param_errors == {} and params.validate(p) == []
        cfg = EngineConfig(**engine_overrides(p))
        norm = ThermalNormalizer(**cfg.thermal_kwargs())
        out = norm(np.array([[27315, 30015, 32315, 40000]], np.uint16))
        assert np.allclose(out, [[0.0, 0.54, 1.0, 1.0]], atol=1e-4)
    finally:
        node.destroy_node()


@pytest.mark.parametrize(("value", "engine_size"), [(0, None), ("0", None), ("auto", "auto"), ("736x416", (416, 736))])
def test_input_size_parameter_reaches_the_engine(tmp_path: Path, value, engine_size) -> None:
    """`input_size: 0` in YAML (or `-p model.input_size:=0`) is an integer: accepted like the string."""
    from mafs_ros.node import engine_overrides

    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"model": {"input_size": value}}}}))
    node = MafsNode(namespace="/t_isize", engine_factory=tiny_engine, cli_args=["--ros-args", "--params-file", str(f)])
    try:
        assert node._param_errors == {}
        p = params.NodeParams.from_node(node)
        assert params.validate(p) == []
        assert engine_overrides(p)["input_size"] == engine_size
    finally:
        node.destroy_node()


def test_tta_parameters_reach_the_engine_and_a_bad_set_is_named(tmp_path: Path) -> None:
    from mafs_core.engine import EngineConfig
    from mafs_ros.node import engine_overrides

    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"model": {"tta_scales": [0.75, 1.0, 1.25],
                                                                       "tta_flip": True}}}}))
    node = MafsNode(namespace="/t_tta", engine_factory=tiny_engine, cli_args=["--ros-args", "--params-file", str(f)])
    try:
        p = params.NodeParams.from_node(node)
        assert node._param_errors == {} and params.validate(p) == []
        cfg = EngineConfig(**engine_overrides(p))
        assert (cfg.tta_scales, cfg.tta_flip) == ((0.75, 1.0, 1.25), True)
    finally:
        node.destroy_node()
    node = MafsNode(namespace="/t_tta_bad", engine_factory=tiny_engine,
                    parameter_overrides=[Parameter("model.tta_scales", value=[0.75, 1.25])])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "'model.tta_scales' = [0.75, 1.25] rejected: tta_scales must include 1.0" in \
            "\n".join(node.configure_errors)
    finally:
        node.destroy_node()


def test_bad_parameters_fail_configure_naming_them(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "sync": {"slop": -1.0, "backend": "bogus", "queue_size": "ten"},
        "thermal": {"low_percentile": 90.0, "high_percentile": 10.0},
        "model": {"checkpoint": str(tmp_path / "missing.safetensors"), "input_size": "big", "input_width": 320,
                  "warmup_size": "1080p"}}}}))
    node = MafsNode(namespace="/t_badp", engine_factory=tiny_engine, cli_args=["--ros-args", "--params-file", str(f)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node._state_machine.current_state[1] == "unconfigured"
        text = "\n".join(node.configure_errors)
        for name in ("'sync.slop' = -1.0", "'sync.backend' = 'bogus'", "'sync.queue_size' = 'ten'",
                     "'thermal.low_percentile'", "'model.checkpoint'", "missing.safetensors",
                     "'model.input_size' = 'big'", "'model.input_width' was replaced by 'model.input_size",
                     "'model.warmup_size' = '1080p'"):
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


# ---------------------------------------------------------------- what a robot integrator meets


class RecordingEngine:
    """The tiny real engine, recording warm-up sizes and resets (and failing its warm-up when asked)."""

    def __init__(self, fail_warmup: str = ""):
        self.threads = {("load", threading.get_ident())}  # (call, thread) pairs: the factory runs __init__
        self.inner = tiny_engine()
        self.fail_warmup = fail_warmup
        self.warmups: list[tuple[int, int]] = []
        self.resets = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def warmup(self, size, iters):
        self.threads.add(("warmup", threading.get_ident()))
        if self.fail_warmup:
            raise RuntimeError(self.fail_warmup)
        self.warmups.append(tuple(size))
        self.inner.warmup(size, iters)

    def run(self, *args, **kwargs):
        self.threads.add(("run", threading.get_ident()))
        return self.inner.run(*args, **kwargs)

    def release(self) -> None:
        self.threads.add(("release", threading.get_ident()))
        self.inner.release()

    def reset(self) -> None:
        self.resets += 1
        self.inner.reset()


def test_the_engine_is_loaded_warmed_up_run_and_released_on_one_thread() -> None:
    """PyTorch's CPU kernels run on an OpenMP team per calling thread: a model loaded on the executor's thread
    and run on another gave the process two teams on the same cores (~25 % slower on a 2-core CPU)."""
    engines: list[RecordingEngine] = []

    def factory(_p):
        engines.append(RecordingEngine())
        return engines[-1]

    with harness("/t_thread", overrides={"model.warmup_iterations": 1}, engine_factory=factory) as h:
        h.wait_connected()
        h.send_pair(0)
        wait_for(lambda: h.got["fused/image"], 30, "first output")
        assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS  # releases, then reloads below
        assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        h.wait_connected()
        h.send_pair(1)
        wait_for(lambda: len(h.got["fused/image"]) == 2, 30, "output after re-activation")
        executor_thread = h.thread.ident
    calls = engines[0].threads | engines[1].threads
    assert {c for c, _ in engines[0].threads} == {"load", "warmup", "run", "release"}
    threads = {t for _, t in calls}
    assert len(threads) == 1, calls
    assert threads.isdisjoint({threading.main_thread().ident, executor_thread})


@pytest.mark.timeout(90)
@pytest.mark.parametrize("encoding", ["bgra8", "rgba8"])
def test_four_channel_rgb_is_fused_like_its_three_channel_form(encoding: str) -> None:
    """ZED cameras and simulators publish bgra8/rgba8: the alpha channel is ignored, the colours are used."""
    with harness(f"/t_{encoding}") as h:
        h.wait_connected()
        h.send_pair(0, rgb_encoding=encoding[:3] + "8")
        wait_for(lambda: len(h.got["fused/image"]) == 1, 30, "output of the 3-channel pair")
        h.send_pair(0, rgb_encoding=encoding)  # same thermal and colours, plus alpha
        wait_for(lambda: len(h.got["fused/image"]) == 2, 30, f"output of the {encoding} pair")
        a, b = h.got["fused/image"]
        assert (b.encoding, b.height, b.width) == ("bgr8", H, W)
        assert bytes(a.data) == bytes(b.data)
        wait_for(lambda: len(h.got["segmentation/overlay"]) == 2, 10, "overlay")
        assert h.got["segmentation/overlay"][1].encoding == "bgr8"
        assert h.last_diag()["bad_input.rgb"] == "0"


@pytest.mark.timeout(90)
def test_camera_info_is_found_beside_a_remapped_rgb_topic() -> None:
    cam = "/t_cinfo_cam/color"
    with harness("/t_cinfo", cli_args=["--ros-args", "-r", f"rgb/image:={cam}/image_raw"]) as h:
        assert h.node.camera_info_topic() == f"{cam}/camera_info"  # image_pipeline convention
        h.rgb_pub = h.probe.create_publisher(Image, f"{cam}/image_raw", RELIABLE)
        h.info_pub = h.probe.create_publisher(CameraInfo, f"{cam}/camera_info", RELIABLE)
        wait_for(lambda: h.info_pub.get_subscription_count() > 0, 20, "camera_info subscription")
        h.wait_connected()
        h.info_pub.publish(CameraInfo(height=H, width=W, k=[40.0, 0, 40, 0, 40, 32, 0, 0, 1]))
        time.sleep(0.2)
        h.send_pair(0)
        wait_for(lambda: h.got["fused/camera_info"], 30, "camera_info next to the outputs")
        assert h.got["fused/camera_info"][0].k[0] == 40.0
    explicit = MafsNode(namespace="/t_cinfo2", engine_factory=tiny_engine, cli_args=[
        "--ros-args", "-r", "rgb/image:=/a/image_raw", "-r", "rgb/camera_info:=/b/info"])
    try:
        assert explicit.camera_info_topic() == "/b/info"  # an explicit remap wins
    finally:
        explicit.destroy_node()


@pytest.mark.timeout(90)
def test_failed_activation_logs_its_cause_stays_inactive_and_can_be_retried(capfd) -> None:
    oom = "CUDA out of memory. Tried to allocate 2.00 GiB"
    with harness("/t_actfail", autostart=False, overrides={"model.warmup_iterations": 1},
                 engine_factory=lambda _p: RecordingEngine(fail_warmup=oom)) as h:
        assert not h.node.autostart()
        assert h.node.state_label() == "inactive"
        log = capfd.readouterr()
        text = log.out + log.err
        assert f"activate failed (RuntimeError): {oom}" in text and "node stays inactive" in text, text
        d = h.last_diag()
        assert d["level"] == b"\x02" and oom in d["message"] and d["state"] == "inactive", d  # ERROR
        h.node.engine_factory = lambda _p: RecordingEngine()  # e.g. another process freed the GPU
        assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_for(lambda: h.diags[-1]["level"] == b"\x00", 10, "diagnostics back to OK")


@pytest.mark.timeout(60)
def test_configure_failure_reaches_diagnostics() -> None:
    with harness("/t_cfgfail", autostart=False, overrides={"model.checkpoint": "/nonexistent/m.safetensors"}) as h:
        d = h.last_diag()
        assert d["state"] == "unconfigured" and d["level"] == b"\x00"  # waiting, not failed
        assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
        wait_for(lambda: h.diags[-1]["level"] == b"\x02", 10, "an ERROR status")
        d = h.diags[-1]
        assert "configure failed" in d["message"] and "model.checkpoint" in d["message"], d


@pytest.mark.timeout(60)
def test_only_the_nodes_own_parameters_wait_for_the_next_configure(capfd) -> None:
    with harness("/t_plog") as h:
        capfd.readouterr()
        assert h.node.set_parameters([Parameter("use_sim_time", value=True)])[0].successful
        assert h.node.set_parameters([Parameter("use_sim_time", value=False)])[0].successful
        assert h.node.set_parameters([Parameter("model.device", value="cpu")])[0].successful
        time.sleep(0.2)
        log = capfd.readouterr()
        lines = [ln for ln in (log.out + log.err).splitlines() if "take effect at the next configure" in ln]
        assert len(lines) == 1 and "model.device take effect" in lines[0], lines


@pytest.mark.timeout(90)
def test_warm_up_follows_the_camera_size_once_known() -> None:
    engines: list[RecordingEngine] = []

    def factory(_p):
        engines.append(RecordingEngine())
        return engines[-1]

    with harness("/t_warm", overrides={"model.warmup_iterations": 1}, engine_factory=factory) as h:
        assert engines[0].warmups == [(480, 640)]  # nothing known yet
        h.wait_connected()
        h.send_pair(0)
        wait_for(lambda: h.got["fused/image"], 30, "first output")
        d = h.last_diag()
        assert (d["camera_size"], d["warmup_size"], d["warmup_misses"]) == (f"{W}x{H}", "640x480", "1")
        assert "first_frame_at_new_size_ms.max" in d and "latency_ms.p50" not in d  # the one-off is kept apart
        assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert engines[-1].warmups == [(H, W)]  # the next activation warms up at the camera's size
        h.wait_connected()
        h.send_pair(1)
        wait_for(lambda: len(h.got["fused/image"]) == 2, 30, "second output")
        d = h.last_diag()
        assert d["warmup_misses"] == "1" and "latency_ms.p50" in d
    # a camera size given up front: warmed up at it before any frame, so the first frame is no miss
    with harness("/t_warm2", overrides={"model.warmup_iterations": 1, "model.warmup_size": f"{W}x{H}"},
                 engine_factory=factory) as h:
        assert engines[-1].warmups == [(H, W)]
        h.wait_connected()
        h.send_pair(0)
        wait_for(lambda: h.got["fused/image"], 30, "first output")
        d = h.last_diag()
        assert (d["warmup_size"], d["warmup_misses"]) == (f"{W}x{H}", "0") and "latency_ms.p50" in d


@pytest.mark.timeout(90)
def test_negative_thermal_offset_with_stamps_near_zero_keeps_pairing() -> None:
    """Sim time or a driver that leaves stamps at 0: thermal stamp + offset < 0 must not end anything."""
    with harness("/t_zero", overrides={"sync.thermal_time_offset": -0.5, "max_pair_age": 0.0,
                                       "sync.backend": "builtin"}) as h:
        h.wait_connected()
        h.thermal_pub.publish(make_image(np.zeros((H, W), np.uint8), "mono8", 10_000_000, "lonely"))  # 0.01 - 0.5
        for k in range(3):
            h.send_pair(k, thermal_dt=0.5, stamp=100_000_000 * (k + 1))  # rgb at 0.1 s .. 0.3 s
            wait_for(lambda k=k: len(h.got["fused/image"]) > k, 30, f"pair {k}")
        assert [stamp_of(m) for m in h.got["fused/image"]] == [100_000_000, 200_000_000, 300_000_000]
        d = h.last_diag()
        assert d["errors"] == "0" and d["pairs"] == "3"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("sim_time", [True, False], ids=["use_sim_time", "stamps_only"])
def test_looping_bag_gives_the_same_pairs_every_pass(tmp_path: Path, sim_time: bool) -> None:
    """`mafs bag play --loop` over DDS: RGB at 3x the thermal rate, so the queues end each pass full of end-of-bag
    stamps. Every pass must give all its pairs (later passes gave almost none). With use_sim_time and --clock the
    clock's jump callback sees the loop first; without, the stamps going back do."""
    from mafs_core.bag import T0_NS
    from mafs_core.bagio import BagWriter

    ns, n_rgb, period = "/t_loop", 30, 66_666_667  # 2 s at 15 Hz RGB, 5 Hz thermal: 10 pairs a pass
    bag = tmp_path / "loop"
    rng = np.random.default_rng(0)
    with BagWriter(bag) as w:
        for k in range(n_rgb):
            t = T0_NS + k * period
            w.write_image(f"{ns}/rgb/image", rng.integers(0, 255, (H, W, 3), np.uint8), "bgr8", t, f"rgb_{k}")
            if k % 3 == 0:
                w.write_image(f"{ns}/thermal/image", rng.integers(0, 255, (H, W), np.uint8), "mono8", t + 4_000_000,
                              f"th_{k}")
    engines: list[RecordingEngine] = []

    def factory(_p):
        engines.append(RecordingEngine())
        return engines[-1]

    overrides = {"use_sim_time": sim_time, "sync.backend": "builtin", "qos.input_reliability": "reliable",
                 "qos.input_depth": 50, "max_pair_age": 10.0 if sim_time else 0.0}  # wall clock: 2023 stamps
    with harness(ns, overrides=overrides, engine_factory=factory) as h:
        clock = ["--clock", "100"] if sim_time else []
        # half speed: 7.5 pairs/s leave a loaded CI machine room, so no pair is lost to the newest-wins mailbox
        player = subprocess.Popen([sys.executable, "-m", "mafs_ros.cli", "bag", "play", str(bag), "--loop", *clock,
                                   "--rate", "0.5", "--wait-for-subscribers", "1"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def passes() -> list[int]:
                counts, last = [0], -1
                for m in list(h.got["fused/image"]):
                    if stamp_of(m) < last:
                        counts.append(0)
                    counts[-1] += 1
                    last = stamp_of(m)
                return counts

            wait_for(lambda: len(passes()) >= 4 or player.poll() is not None, 100, "three passes of the bag")
        finally:
            if player.poll() is None:
                player.send_signal(signal.SIGINT)
            out = player.communicate(timeout=20)[0]
        d = h.last_diag()
        assert passes()[:3] == [10, 10, 10], (passes(), d.get("dropped.replaced"), out)
        stamps = int(d["time_jumps.stamps_thermal"]) + int(d["time_jumps.stamps_rgb"])
        clock = int(d["time_jumps.clock"])
        assert stamps + clock >= 3 and (clock >= 3 if sim_time else clock == 0), (stamps, clock)  # >= 3 loops seen
        assert engines[0].resets >= 3 and int(d["time_jumps.engine_resets"]) == engines[0].resets
        assert d["errors"] == "0"


def test_node_imports_and_runs_with_humbles_rclpy_layout() -> None:
    """Humble's rclpy (3.x) has rclpy.qos_event instead of rclpy.event_handler and no post-set parameter
    callbacks: simulate that layout in a fresh interpreter, then build, start and reconfigure the node."""
    code = """
import sys, types
import rclpy.event_handler as handlers
import rclpy.clock, rclpy.executors, rclpy.lifecycle, rclpy.node  # rclpy's own modules load first (real ones)
humble = types.ModuleType("rclpy.qos_event")
humble.SubscriptionEventCallbacks = handlers.SubscriptionEventCallbacks
sys.modules["rclpy.qos_event"], sys.modules["rclpy.event_handler"] = humble, None  # None: ImportError
del rclpy.node.Node.add_post_set_parameters_callback
import rclpy
from rclpy.parameter import Parameter
import mafs_ros.node as mn
from mafs_core.engine import FusionSegmenter
assert mn.SubscriptionEventCallbacks is humble.SubscriptionEventCallbacks
assert not hasattr(mn.MafsNode, "add_post_set_parameters_callback")
rclpy.init()
node = mn.MafsNode(namespace="/t_humble", engine_factory=lambda p: FusionSegmenter.from_variant(
    "mafs_t", device="cpu", warmup=0), parameter_overrides=[Parameter("model.warmup_iterations", value=0)])
assert node.autostart() and node.state_label() == "active"
assert node.set_parameters([Parameter("sync.slop", value=0.2)])[0].successful
assert node.p.sync_slop == 0.2 and node.sync.slop == 0.2, "live parameter not applied"
assert not node.set_parameters([Parameter("sync.backend", value="bogus")])[0].successful
assert node.p.sync_backend == "auto"
node.stop(); node.destroy_node(); rclpy.shutdown()
print("humble layout: ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and "humble layout: ok" in out.stdout, out.stdout + out.stderr


@pytest.mark.timeout(90)
def test_wait_for_active_returns_only_once_the_node_is_active() -> None:
    """What replay.launch.py runs before `ros2 bag play`, so a bag's first frames are not published into nothing."""
    cmd = [sys.executable, "-m", "mafs_ros.lifecycle_wait", "mafs_node", "--timeout", "60", "--ros-args",
           "-r", "__ns:=/t_wait"]
    with harness("/t_wait", autostart=False) as h:
        waiter = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(3.0)  # it has found the service by now (discovery), and sees "unconfigured"
            assert waiter.poll() is None, waiter.communicate()[0]
            assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            time.sleep(1.0)
            assert waiter.poll() is None, "returned while only inactive"
            assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            out = waiter.communicate(timeout=30)[0]
        finally:
            if waiter.poll() is None:
                waiter.kill()
        assert waiter.returncode == 0 and "/t_wait/mafs_node is active" in out, out
    gone = subprocess.run([*cmd[:5], "1", *cmd[6:]], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "not active after 1 s" in gone.stdout, gone.stdout + gone.stderr
