"""`mafs_node`: thermal + RGB in, fused image and semantic segmentation out (a lifecycle node).

One frame's path: ``_on_thermal``/``_on_rgb`` (validate, O(1)) -> ``sync.py`` (pair by stamp)
-> ``_on_pair`` (1-slot mailbox: the newest pair wins, a replaced pair is a drop) -> worker thread
``_process`` -> ``engine.run`` (mafs_core/engine.py) -> ``conversions.py`` -> publishers, each
output carrying the RGB message's header unchanged.

Lifecycle: configure validates parameters and loads the model; activate warms it up, subscribes
and starts the worker; deactivate stops them and frees device memory; cleanup drops publishers.
With ``autostart`` (default) ``main`` runs configure + activate itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from mafs_ros import conversions, diagnostics, params, qos
from mafs_ros.conversions import ImageError
from mafs_ros.env import configure_ros_env
from mafs_ros.params import NodeParams
from mafs_ros.sync import PairSync, make_sync

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
EngineFactory = Callable[[NodeParams], Any]  # -> a mafs_core.engine.FusionSegmenter (or the same interface)

# Relative names: remap them or push the node into a namespace.
THERMAL_TOPIC, RGB_TOPIC, RGB_INFO_TOPIC = "thermal/image", "rgb/image", "rgb/camera_info"
OUTPUTS = {  # key -> (topic, encoding)
    "fused": ("fused/image", "bgr8"),
    "mask": ("segmentation/mask", "mono8"),
    "color": ("segmentation/color", "rgb8"),
    "overlay": ("segmentation/overlay", "bgr8"),
}
INFO_OUTPUTS = ("fused/camera_info", "segmentation/camera_info")
CLASS_INFO_TOPIC = "segmentation/class_info"


def default_engine_factory(p: NodeParams) -> Any:
    """Load the checkpoint with the node's engine parameters (imported here: torch loads only at configure)."""
    from mafs_core.engine import FusionSegmenter

    return FusionSegmenter.from_checkpoint(p.model_checkpoint or None, device=p.model_device,
                                           precision=p.model_precision, **engine_overrides(p))


def engine_overrides(p: NodeParams) -> dict[str, Any]:
    """NodeParams -> mafs_core.engine.EngineConfig fields (warm-up is done at activate, not at load)."""
    cfg: dict[str, Any] = {
        "input_size": (p.model_input_height, p.model_input_width) if p.model_input_width else None,
        "homography": None if np.allclose(p.registration_homography, params.IDENTITY) else p.registration_homography,
        "overlay_alpha": p.overlay_alpha,
        "warmup": 0,
    }
    if p.thermal_normalization != "checkpoint":
        fixed = p.thermal_fixed_low != p.thermal_fixed_high
        cfg.update(thermal_norm=p.thermal_normalization, thermal_low_pct=p.thermal_low_percentile,
                   thermal_high_pct=p.thermal_high_percentile, thermal_smoothing=p.thermal_smoothing,
                   thermal_low=p.thermal_fixed_low if fixed else None,
                   thermal_high=p.thermal_fixed_high if fixed else None)
    return cfg


class Mailbox:
    """One slot between the executor and the worker: ``put`` replaces, ``take`` blocks. Never a backlog."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced one the worker had not taken (a drop)."""
        with self._cv:
            replaced = self._item is not None
            self._item = item
            self._cv.notify()
            return replaced

    def take(self) -> Any:
        """The newest item, or None once closed."""
        with self._cv:
            while self._item is None and not self._closed:
                self._cv.wait()
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class MafsNode(LifecycleNode):
    """The fusion + segmentation node. ``engine_factory`` lets embedders and tests supply the engine."""

    def __init__(self, node_name: str = "mafs_node", *, engine_factory: EngineFactory | None = None,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.engine_factory = engine_factory or default_engine_factory
        self._param_errors = params.declare(self)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.p: NodeParams | None = None
        self.configure_errors: list[str] = []  # why the last configure failed (also logged)
        self.engine: Any = None
        self.sync: PairSync | None = None
        self.stats = diagnostics.PipelineStats()
        self._mailbox: Mailbox | None = None
        self._worker: threading.Thread | None = None
        self._pubs: dict[str, Any] = {}
        self._info_pubs: list[Any] = []
        self._class_info_pub: Any = None
        self._diag_pub: Any = None
        self._diag_timer: Any = None
        self._subs: list[Any] = []
        self._camera_info: CameraInfo | None = None
        self._last_rx = [0.0, 0.0]  # monotonic time of the last message per stream (0 = never)
        self._matched_at_last_report = 0
        self._received_at_last_report = [0, 0]
        self._mismatch: float | None = None  # stamp gap (s) while both streams flow and nothing pairs
        self._publisher_counts = (-1, -1)
        self._last_report = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    def autostart(self) -> bool:
        """configure + activate (what `ros2 run` and `mafs-node` do unless autostart:=false)."""
        if self.trigger_configure() != SUCCESS:
            self.get_logger().error("configure failed: node stays unconfigured (fix and call the configure "
                                    "transition, e.g. `ros2 lifecycle set <node> configure`)")
            return False
        if self.trigger_activate() != SUCCESS:
            self.get_logger().error("activate failed: node stays inactive")
            return False
        return True

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = NodeParams.from_node(self)
        self.configure_errors = [*self._param_errors.values(), *params.validate(p)]
        if not self.configure_errors:
            try:
                self.engine = self.engine_factory(p)
            except Exception as exc:  # a missing/corrupt checkpoint must leave the node up, unconfigured
                self.configure_errors.append(f"cannot load the model ({type(exc).__name__}): {exc}")
        if self.configure_errors:
            for e in self.configure_errors:
                self.get_logger().error(e)
            return FAILURE
        self.p = p
        out_qos = qos.output_qos(p.qos_output_reliability, p.qos_output_depth)
        self._pubs = {k: self.create_lifecycle_publisher(Image, topic, out_qos) for k, (topic, _) in OUTPUTS.items()}
        self._info_pubs = [self.create_lifecycle_publisher(CameraInfo, t, out_qos) for t in INFO_OUTPUTS]
        self._class_info_pub = self.create_lifecycle_publisher(String, CLASS_INFO_TOPIC, qos.latched_qos())
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(p.diagnostics_period, self._report)
        self.get_logger().info(f"configured: model {self._model_name()} on {getattr(self.engine, 'device', '?')} "
                               f"({getattr(self.engine, 'precision', '?')})")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.p
        assert p is not None
        if self.engine is None:  # released by deactivate
            try:
                self.engine = self.engine_factory(p)
            except Exception as exc:
                self.get_logger().error(f"cannot reload the model ({type(exc).__name__}): {exc}")
                return FAILURE
        self._warmup(p.model_warmup_iterations)
        ret = super().on_activate(state)  # enables the lifecycle publishers
        self._publish_class_info()
        self._make_sync()
        self._mailbox = Mailbox()
        self._worker = threading.Thread(target=self._work, args=(self._mailbox,), name="mafs_worker", daemon=True)
        self._worker.start()
        in_qos = qos.input_qos(p.qos_input_reliability, p.qos_input_depth)
        self._subs = [
            self.create_subscription(Image, THERMAL_TOPIC, self._on_thermal, in_qos,
                                     event_callbacks=self._events(THERMAL_TOPIC)),
            self.create_subscription(Image, RGB_TOPIC, self._on_rgb, in_qos, event_callbacks=self._events(RGB_TOPIC)),
            self.create_subscription(CameraInfo, RGB_INFO_TOPIC, self._on_camera_info, in_qos),
        ]
        self._check_qos()
        self._last_rx = [0.0, 0.0]
        thermal_topic, rgb_topic = self.resolve_topic_name(THERMAL_TOPIC), self.resolve_topic_name(RGB_TOPIC)
        self.get_logger().info(f"active: {thermal_topic} + {rgb_topic} -> {self.resolve_topic_name('fused/image')}, "
                               f"{self.resolve_topic_name('segmentation/mask')} (sync: {self.sync.name})")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_pipeline()
        if self.engine is not None and hasattr(self.engine, "release"):
            self.engine.release()  # give the GPU memory back while inactive
        self.engine = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_outputs()
        self.engine = None
        self.p = None
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        return SUCCESS  # back to unconfigured

    def stop(self) -> None:
        """Stop everything from any state (shutdown, error, Ctrl-C)."""
        self._stop_pipeline()
        if self.engine is not None and hasattr(self.engine, "release"):
            self.engine.release()
        self.engine = None
        self._destroy_outputs()

    def _stop_pipeline(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._mailbox is not None:
            self._mailbox.close()
        if self._worker is not None:
            self._worker.join(30)
        self._mailbox, self._worker, self.sync = None, None, None

    def _destroy_outputs(self) -> None:
        for pub in [*self._pubs.values(), *self._info_pubs, self._class_info_pub]:
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._pubs, self._info_pubs, self._class_info_pub = {}, [], None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
        self._diag_timer = self._diag_pub = None

    def _warmup(self, iterations: int) -> None:
        """Dummy inferences so the first real frame does not pay for allocation / autotuning / graph capture."""
        p = self.p
        if iterations <= 0 or p is None:
            return
        t0 = time.perf_counter()
        size = (p.model_input_height, p.model_input_width) if p.model_input_width else (480, 640)
        if hasattr(self.engine, "warmup"):
            self.engine.warmup(size, iterations)
        else:
            for _ in range(iterations):
                self.engine.run(np.zeros(size, np.uint8), np.zeros((*size, 3), np.uint8))
        self.get_logger().info(f"warm-up: {iterations} runs at {size[1]}x{size[0]} in {time.perf_counter() - t0:.2f} s")

    # ------------------------------------------------------------------ inputs

    def _make_sync(self) -> None:
        p = self.p
        assert p is not None
        self.sync = make_sync(p.sync_backend, p.sync_queue_size, p.sync_slop, p.sync_thermal_time_offset,
                              self._on_pair)
        self._matched_at_last_report, self._received_at_last_report = 0, [0, 0]  # a new sync counts from 0
        self._mismatch = None

    def _events(self, topic: str) -> SubscriptionEventCallbacks:
        def incompatible(info: Any) -> None:
            self.get_logger().warning(
                f"QoS incompatible with a publisher on {self.resolve_topic_name(topic)} (policy "
                f"{info.last_policy_kind.name}): no data will flow; check qos.input_reliability",
                throttle_duration_sec=self._warn_period())
        return SubscriptionEventCallbacks(incompatible_qos=incompatible)

    def _check_qos(self) -> None:
        p = self.p
        assert p is not None
        sub_qos = qos.input_qos(p.qos_input_reliability, p.qos_input_depth)
        for topic in (THERMAL_TOPIC, RGB_TOPIC):
            for w in qos.check_publishers(self, self.resolve_topic_name(topic), sub_qos):
                self.get_logger().warning(w)

    def _on_thermal(self, msg: Image) -> None:
        self._on_image(0, msg)

    def _on_rgb(self, msg: Image) -> None:
        self._on_image(1, msg)

    def _on_image(self, stream: int, msg: Image) -> None:
        self._last_rx[stream] = time.monotonic()
        name = ("thermal", "rgb")[stream]
        try:
            conversions.check_image(msg, conversions.THERMAL_ENCODINGS if stream == 0 else conversions.RGB_ENCODINGS)
        except ImageError as exc:
            self._bad_input(name, str(exc))
            return
        sync = self.sync
        if sync is not None:
            (sync.add_thermal if stream == 0 else sync.add_rgb)(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _bad_input(self, stream: str, why: str) -> None:
        self.stats.inc(f"bad_input.{stream}")
        topic = self.resolve_topic_name(THERMAL_TOPIC if stream == "thermal" else RGB_TOPIC)
        self.get_logger().warning(f"bad input on {topic}: {why}; dropped", throttle_duration_sec=self._warn_period())

    def _on_pair(self, thermal: Image, rgb: Image) -> None:
        mailbox = self._mailbox
        if mailbox is not None and mailbox.put((thermal, rgb, time.perf_counter(), self.get_clock().now().nanoseconds)):
            self.stats.inc("dropped.replaced")

    # ------------------------------------------------------------------ worker

    def _work(self, mailbox: Mailbox) -> None:
        while (item := mailbox.take()) is not None:
            try:
                self._process(*item)
            except Exception as exc:  # never let one frame kill the worker
                self.stats.inc("errors")
                self.get_logger().error(f"frame failed ({type(exc).__name__}): {exc}",
                                        throttle_duration_sec=self._warn_period())

    def _process(self, thermal_msg: Image, rgb_msg: Image, t_paired: float, paired_ns: int) -> None:
        p, engine = self.p, self.engine
        if p is None or engine is None:
            return
        t0 = time.perf_counter()
        stamp_ns = rgb_msg.header.stamp.sec * 1_000_000_000 + rgb_msg.header.stamp.nanosec
        age = (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9
        if p.max_pair_age > 0 and age > p.max_pair_age:
            self.stats.inc("dropped.stale")
            self.get_logger().warning(f"pair {age:.3f} s old (> max_pair_age {p.max_pair_age} s): dropped",
                                      throttle_duration_sec=self._warn_period())
            return
        try:
            thermal, n_nonfinite = conversions.thermal_to_numpy(thermal_msg)
        except ImageError as exc:
            self._bad_input("thermal", str(exc))
            return
        try:
            rgb, rgb_encoding = conversions.rgb_to_numpy(rgb_msg)
        except ImageError as exc:
            self._bad_input("rgb", str(exc))
            return
        if n_nonfinite:
            self.stats.inc("nonfinite_frames")
            self.get_logger().warning(f"{n_nonfinite} NaN/inf thermal pixels replaced by the coldest value",
                                      throttle_duration_sec=self._warn_period())
        t1 = time.perf_counter()
        want_color = self._pubs["color"].get_subscription_count() > 0
        want_overlay = self._pubs["overlay"].get_subscription_count() > 0
        result = engine.run(thermal, rgb, rgb_encoding=rgb_encoding, want_color=want_color, want_overlay=want_overlay)
        t2 = time.perf_counter()
        header = rgb_msg.header
        self._pubs["fused"].publish(conversions.numpy_to_image(result.fused_bgr, "bgr8", header))
        self._pubs["mask"].publish(conversions.numpy_to_image(result.mask, "mono8", header))
        if want_color and result.color is not None:
            self._pubs["color"].publish(conversions.numpy_to_image(result.color, "rgb8", header))
        if want_overlay and result.overlay is not None:
            self._pubs["overlay"].publish(conversions.numpy_to_image(result.overlay, "bgr8", header))
        info = self._camera_info
        if info is not None:
            out = CameraInfo(header=header, height=info.height, width=info.width,
                             distortion_model=info.distortion_model, d=info.d, k=info.k, r=info.r, p=info.p,
                             binning_x=info.binning_x, binning_y=info.binning_y, roi=info.roi)
            for pub in self._info_pubs:
                pub.publish(out)
        t3 = time.perf_counter()
        latency = (self.get_clock().now().nanoseconds - stamp_ns) * 1e-6
        engine_total = float(result.timings.get("total", (t2 - t1) * 1e3))
        times = {f"engine.{k}_ms": v for k, v in result.timings.items()}
        wait = (t0 - t_paired) * 1e3  # the pair waited for the worker: only while the engine is busy
        times.update({"input_ms": (paired_ns - stamp_ns) * 1e-6, "queue_wait_ms": wait, "decode_ms": (t1 - t0) * 1e3,
                      "engine_call_ms": (t2 - t1) * 1e3, "publish_ms": (t3 - t2) * 1e3, "latency_ms": latency,
                      "overhead_ms": latency - engine_total, "node_ms": latency - engine_total - wait})
        self.stats.add_times(times)
        self.stats.inc("processed")

    # ------------------------------------------------------------------ diagnostics

    def _warn_period(self) -> float:
        return self.p.diagnostics_warn_period if self.p is not None else 5.0

    def _model_name(self) -> str:
        return str(getattr(self.engine, "variant", None) or "custom engine")

    def _publish_class_info(self) -> None:
        names = list(getattr(self.engine, "class_names", []))
        palette = np.asarray(getattr(self.engine, "palette", np.zeros((0, 3), np.uint8))).tolist()
        payload = {"model": self._model_name(), "num_classes": len(names), "class_names": names, "palette": palette,
                   "mask_topic": self.resolve_topic_name(OUTPUTS["mask"][0])}
        self._class_info_pub.publish(String(data=json.dumps(payload)))

    def _report(self) -> None:
        """Every diagnostics.period: one DiagnosticStatus, plus the silent-stream / never-matching warnings."""
        p = self.p
        if p is None or self._diag_pub is None:
            return
        now = time.monotonic()
        period, self._last_report = max(now - self._last_report, 1e-3), now
        counters, timings = self.stats.snapshot()
        sync = self.sync
        sync_stats = sync.stats() if sync is not None else {}
        topics = (self.resolve_topic_name(THERMAL_TOPIC), self.resolve_topic_name(RGB_TOPIC))
        level, problems = diagnostics.OK, []
        active = sync is not None
        if active:
            fresh = [self._last_rx[i] > 0 and now - self._last_rx[i] < p.diagnostics_silent_timeout for i in (0, 1)]
            for i in (0, 1):
                if fresh[1 - i] and not fresh[i]:
                    ago = "never" if self._last_rx[i] == 0 else f"for {now - self._last_rx[i]:.1f} s"
                    problems.append(f"no message on {topics[i]} ({ago}) while {topics[1 - i]} flows")
            matched, received = sync_stats["matched"], sync_stats["received"]
            new_pairs = matched - self._matched_at_last_report
            new_rx = [received[i] - self._received_at_last_report[i] for i in (0, 1)]
            self._matched_at_last_report, self._received_at_last_report = matched, received
            if new_pairs > 0:
                self._mismatch = None
            elif min(new_rx) > 0:  # both streams flowed this period, yet nothing paired
                self._mismatch = sync.closest_gap()
            if self._mismatch is not None and all(fresh):
                gap = self._mismatch
                problems.append(f"stamps differ by {abs(gap):.3f} s, more than slop ({p.sync_slop} s): no pairs "
                                f"(thermal {'later' if gap > 0 else 'earlier'}; check the camera clocks, or set "
                                f"sync.thermal_time_offset to {p.sync_thermal_time_offset - gap:.3f} if the offset "
                                "is fixed)")
            if not any(fresh):
                problems.append("waiting for input")
            self._recheck_qos(topics)
        else:
            new_pairs = 0
        bad = sum(v for k, v in counters.items() if k.startswith("bad_input."))
        if any(pr != "waiting for input" for pr in problems) or counters.get("errors", 0):
            level = diagnostics.WARN
        for pr in problems:
            if pr != "waiting for input":
                self.get_logger().warning(pr, throttle_duration_sec=p.diagnostics_warn_period)
        lat = timings.get("latency_ms")
        message = "; ".join(problems) if problems else (
            f"{new_pairs / period:.1f} pairs/s, latency p50 {lat['p50']:.1f} ms" if lat else "active, no frame yet")
        values = {
            "state": "active" if active else "inactive",
            "device": str(getattr(self.engine, "device", "released")),
            "precision": str(getattr(self.engine, "precision", "-")),
            "model": self._model_name(),
            "sync_backend": sync_stats.get("backend", "-"),
            "pair_rate_hz": new_pairs / period,
            "pairs": sync_stats.get("matched", 0),
            "processed": counters.get("processed", 0),
            "received": dict(zip(("thermal", "rgb"), sync_stats.get("received", [0, 0]), strict=True)),
            "unmatched": dict(zip(("thermal", "rgb"), sync_stats.get("unmatched", [0, 0]), strict=True)),
            "bad_input": {"thermal": counters.get("bad_input.thermal", 0), "rgb": counters.get("bad_input.rgb", 0),
                          "total": bad},
            "dropped": {"replaced": counters.get("dropped.replaced", 0), "stale": counters.get("dropped.stale", 0)},
            "nonfinite_frames": counters.get("nonfinite_frames", 0),
            "errors": counters.get("errors", 0),
            "stamp_diff_s": sync_stats.get("stamp_diff", {}),
            **{k: {s: v[s] for s in ("p50", "p99", "max")} for k, v in sorted(timings.items())},
        }
        self._diag_pub.publish(diagnostics.make_array(self.get_clock().now().to_msg(),
                                                      f"{self.get_name()}: fusion pipeline",
                                                      self.get_fully_qualified_name(), level, message, values))

    def _recheck_qos(self, topics: tuple[str, str]) -> None:
        """Re-run the activation QoS check when publishers appear (cameras often start after the node)."""
        counts = (self.count_publishers(topics[0]), self.count_publishers(topics[1]))
        if counts != self._publisher_counts:
            self._publisher_counts = counts
            self._check_qos()

    # ------------------------------------------------------------------ parameters at runtime

    def _check_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        for c in changes:
            why = params.check_value(c.name, c.value)
            if why is not None:
                return SetParametersResult(successful=False, reason=why)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changes: list[Parameter]) -> None:
        for c in changes:  # a valid value set at runtime replaces a rejected one from the params file
            self._param_errors.pop(c.name, None)
        if self.p is None:
            return  # read at the next configure
        live = [c for c in changes if c.name in params.SPEC and params.SPEC[c.name].live]
        later = [c.name for c in changes if c not in live]
        for c in live:
            setattr(self.p, c.name.replace(".", "_"), c.value if not isinstance(c.value, list) else list(c.value))
        if any(c.name.startswith("sync.") for c in live) and self.sync is not None:
            self._make_sync()  # the queued messages are dropped; pairing restarts with the new settings
        if later:
            self.get_logger().info(f"{', '.join(later)} take effect at the next configure (deactivate, cleanup, "
                                   "configure, activate)")


def main(args: list[str] | None = None, engine_factory: EngineFactory | None = None) -> int:
    """`mafs-node` / `ros2 run mafs_ros mafs_node`."""
    configure_ros_env()
    rclpy.init(args=args)
    node = MafsNode(engine_factory=engine_factory)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            node.autostart()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
