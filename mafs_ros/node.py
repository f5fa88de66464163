"""`mafs_node`: thermal + RGB in, fused image and semantic segmentation out (a lifecycle node).

One frame's path: ``_on_thermal``/``_on_rgb`` (validate, O(1)) -> ``sync.py`` (pair by stamp)
-> ``_on_pair`` (1-slot mailbox: the newest pair wins, a replaced pair is a drop) -> worker thread
``_process`` -> ``engine.run`` (mafs_core/engine.py) -> ``conversions.py`` -> publishers, each
output carrying the RGB message's header unchanged.

Lifecycle: configure validates parameters and loads the model; activate warms it up, subscribes
and starts the worker; deactivate stops them and frees device memory; cleanup drops publishers.
With ``autostart`` (default) ``main`` runs configure + activate itself. /diagnostics is published
in every state, so a failed configure or activate is visible to a robot's monitoring.

Time going backwards (a looping bag, a clock reset; stamps and, under ``use_sim_time``, the
clock's jump callback) resets pairing and the thermal normaliser, logged and counted.

Runs on Humble (rclpy 3: ``rclpy.qos_event``, no post-set parameter callbacks) as well as on
Jazzy and Kilted.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.utilities import get_rmw_implementation_identifier
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from mafs_core.objects import mask_objects
from mafs_ros import conversions, diagnostics, params, qos
from mafs_ros.conversions import ImageError
from mafs_ros.env import configure_entry_point, describe_dds, split_local_flag
from mafs_ros.params import NodeParams
from mafs_ros.sync import PairSync, make_sync

try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble (rclpy 3.x): the same class, before its rename in Iron
    from rclpy.qos_event import SubscriptionEventCallbacks

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
EngineFactory = Callable[[NodeParams], Any]  # -> a mafs_core.engine.FusionSegmenter (or the same interface)

# Relative names: remap them or push the node into a namespace.
THERMAL_TOPIC, RGB_TOPIC, RGB_INFO_TOPIC = "thermal/image", "rgb/image", "rgb/camera_info"
OUTPUTS = {  # key -> (topic, encoding)
    "fused": ("fused/image", "bgr8"),
    "mask": ("segmentation/mask", "mono8"),
    "color": ("segmentation/color", "rgb8"),
    "overlay": ("segmentation/overlay", "bgr8"),
    "confidence": ("segmentation/confidence", "mono8"),  # max class probability x 255, only while subscribed
}
INFO_OUTPUTS = ("fused/camera_info", "segmentation/camera_info")
CLASS_INFO_TOPIC = "segmentation/class_info"
OBJECTS_TOPIC = "segmentation/objects"  # vision_msgs/Detection2DArray, or JSON in std_msgs/String without it
DEFAULT_WARMUP_SIZE = (480, 640)  # (h, w) until the camera's size is known
ENGINE_TIMEOUT_S = 30.0  # the longest the executor waits for the engine thread to stop or release


def camera_info_topic(image_topic: str) -> str:
    """image_pipeline convention: camera_info beside the image (/cam/color/image_raw -> /cam/color/camera_info)."""
    head, sep, _ = image_topic.rpartition("/")
    return f"{head}{sep}camera_info"


def default_engine_factory(p: NodeParams) -> Any:
    """Load the checkpoint with the node's engine parameters (imported here: torch loads only at configure)."""
    from mafs_core.engine import FusionSegmenter

    return FusionSegmenter.from_checkpoint(p.model_checkpoint or None, device=p.model_device,
                                           precision=p.model_precision, **engine_overrides(p))


def engine_overrides(p: NodeParams) -> dict[str, Any]:
    """NodeParams -> mafs_core.engine.EngineConfig fields (warm-up is done at activate, not at load)."""
    cfg: dict[str, Any] = {
        "input_size": params.parse_input_size(p.model_input_size),
        "max_input_pixels": p.model_max_input_pixels,
        "homography": None if np.allclose(p.registration_homography, params.IDENTITY) else p.registration_homography,
        "overlay_alpha": p.overlay_alpha,
        "tta_scales": tuple(p.model_tta_scales),
        "tta_flip": p.model_tta_flip,
        "warmup": 0,
    }
    if p.thermal_normalization != "checkpoint":
        fixed = p.thermal_fixed_low != p.thermal_fixed_high
        gain, offset = params.THERMAL_UNITS[p.thermal_units]
        cfg.update(thermal_norm=p.thermal_normalization, thermal_low_pct=p.thermal_low_percentile,
                   thermal_high_pct=p.thermal_high_percentile, thermal_smoothing=p.thermal_smoothing,
                   thermal_low=p.thermal_fixed_low if fixed else None,
                   thermal_high=p.thermal_fixed_high if fixed else None, thermal_gain=gain, thermal_offset=offset)
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


class EngineThread:
    """The one thread that touches the engine: loading, warm-up, every frame, release.

    PyTorch's CPU kernels run on an OpenMP team that belongs to the calling thread. A model loaded on the
    executor's thread and run on a worker gives the process two teams on the same cores: on the 2-core CPU
    the network then ran ~25 % slower (1080p camera: 137 ms against 108 ms, docs/benchmarks.md). A daemon
    thread, so that a frame stuck in the engine cannot keep the process alive.
    """

    def __init__(self, name: str = "mafs_engine") -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def call(self, fn: Callable, *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` on the engine thread and return its result (or raise its exception)."""
        return self.submit(fn, *args).result(timeout)

    def close(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller, whatever it is
                    future.set_exception(exc)


class MafsNode(LifecycleNode):
    """The fusion + segmentation node. ``engine_factory`` lets embedders and tests supply the engine."""

    def __init__(self, node_name: str = "mafs_node", *, engine_factory: EngineFactory | None = None,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.engine_factory = engine_factory or default_engine_factory
        self._param_errors = params.declare(self)
        if hasattr(self, "add_post_set_parameters_callback"):  # Iron and later
            self.add_on_set_parameters_callback(self._check_parameters)
            self.add_post_set_parameters_callback(self._apply_parameters)
        else:  # Humble: apply once our check passed (rclpy checked types and ranges before calling us)
            self.add_on_set_parameters_callback(self._check_and_apply_parameters)
        self.p: NodeParams | None = None
        self.configure_errors: list[str] = []  # why the last configure failed (also logged)
        self.last_error = ""  # why the last configure/activate failed, for /diagnostics
        self.engine: Any = None
        self.sync: PairSync | None = None
        self.stats = diagnostics.PipelineStats()
        self._mailbox: Mailbox | None = None
        self._engine_thread = EngineThread()
        self._worker: Future | None = None  # the frame loop, a long job on the engine thread
        self._pubs: dict[str, Any] = {}
        self._info_pubs: list[Any] = []
        self._class_info_pub: Any = None
        self._objects_pub: Any = None
        self._subs: list[Any] = []
        self._camera_info: CameraInfo | None = None
        self._last_rx = [0.0, 0.0]  # monotonic time of the last message per stream (0 = never)
        self._matched_at_last_report = 0
        self._received_at_last_report = [0, 0]
        self._mismatch: float | None = None  # stamp gap (s) while both streams flow and nothing pairs
        self._publisher_counts = (-1, -1)
        self._last_report = time.monotonic()
        self._engine_reset = threading.Event()  # set by the executor on a time jump; the worker resets
        self._jump_handle: Any = None
        self._camera_size: tuple[int, int] | None = None  # (h, w) of the last RGB frame processed
        self._warmed_size: tuple[int, int] | None = None
        # /diagnostics in every state (a configure failure must reach monitoring); lifecycle-independent
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer: Any = None
        self._restart_diag_timer(self.get_parameter("diagnostics.period").value)

    # ------------------------------------------------------------------ lifecycle

    def autostart(self) -> bool:
        """configure + activate (what `ros2 run` and `mafs-node` do unless autostart:=false)."""
        if self.trigger_configure() != SUCCESS:
            self.get_logger().error(f"configure failed: node stays {self.state_label()} (fix and call the "
                                    "configure transition, e.g. `ros2 lifecycle set <node> configure`)")
            return False
        if self.trigger_activate() != SUCCESS:
            self.get_logger().error(f"activate failed ({self.last_error}): node stays {self.state_label()} "
                                    "(`ros2 lifecycle set <node> activate` retries)")
            return False
        return True

    def state_label(self) -> str:
        return str(self._state_machine.current_state[1])

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = NodeParams.from_node(self)
        self.configure_errors = [*self._param_errors.values(), *params.validate(p)]
        if not self.configure_errors:
            try:
                self.engine = self._engine_thread.call(self.engine_factory, p)
            except Exception as exc:  # a missing/corrupt checkpoint must leave the node up, unconfigured
                self.configure_errors.append(f"cannot load the model ({type(exc).__name__}): {exc}")
        if self.configure_errors:
            for e in self.configure_errors:
                self.get_logger().error(e)
            self.last_error = "configure failed: " + "; ".join(self.configure_errors)
            return FAILURE
        self.p, self.last_error = p, ""
        out_qos = qos.output_qos(p.qos_output_reliability, p.qos_output_depth)
        self._pubs = {k: self.create_lifecycle_publisher(Image, topic, out_qos) for k, (topic, _) in OUTPUTS.items()}
        self._info_pubs = [self.create_lifecycle_publisher(CameraInfo, t, out_qos) for t in INFO_OUTPUTS]
        self._class_info_pub = self.create_lifecycle_publisher(String, CLASS_INFO_TOPIC, qos.latched_qos())
        self._objects_pub = self.create_lifecycle_publisher(conversions.objects_message_type(), OBJECTS_TOPIC, out_qos)
        self._restart_diag_timer(p.diagnostics_period)
        self.get_logger().info(f"configured: model {self._model_name()} on {getattr(self.engine, 'device', '?')} "
                               f"({getattr(self.engine, 'precision', '?')})")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Reload (after deactivate), warm up, subscribe. A failure (CUDA out of memory, a cuDNN error) is
        logged with its cause, reported on /diagnostics, and leaves the node inactive, ready to retry."""
        try:
            return self._activate(state)
        except Exception as exc:
            self.last_error = f"activate failed ({type(exc).__name__}): {exc}"
            self.get_logger().error(self.last_error)
            self._stop_pipeline()
            try:
                self._release_engine()  # give back what the failed warm-up allocated
            except Exception as rel_exc:  # the device may be in a bad state: say so, stay up
                self.get_logger().error(f"releasing the engine failed too ({type(rel_exc).__name__}): {rel_exc}")
            return FAILURE

    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.p
        assert p is not None
        if self.engine is None:  # released by deactivate
            try:
                self.engine = self._engine_thread.call(self.engine_factory, p)
            except Exception as exc:
                self.last_error = f"cannot reload the model ({type(exc).__name__}): {exc}"
                self.get_logger().error(self.last_error)
                return FAILURE
        self._engine_thread.call(self._warmup, p.model_warmup_iterations)
        ret = super().on_activate(state)  # enables the lifecycle publishers
        self._publish_class_info()
        self._make_sync()
        self._mailbox = Mailbox()
        self._worker = self._engine_thread.submit(self._work, self._mailbox)
        in_qos = qos.input_qos(p.qos_input_reliability, p.qos_input_depth)
        self._subs = [
            self.create_subscription(Image, THERMAL_TOPIC, self._on_thermal, in_qos,
                                     event_callbacks=self._events(THERMAL_TOPIC)),
            self.create_subscription(Image, RGB_TOPIC, self._on_rgb, in_qos, event_callbacks=self._events(RGB_TOPIC)),
            self.create_subscription(CameraInfo, self.camera_info_topic(), self._on_camera_info, in_qos),
        ]
        self._check_qos()
        self._last_rx = [0.0, 0.0]
        # under use_sim_time a looping bag resets /clock: the clock's own jump callback sees that
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-self.sync.jump_back), on_clock_change=False),
            post_callback=self._on_clock_jump)
        self.last_error = ""
        thermal_topic, rgb_topic = self.resolve_topic_name(THERMAL_TOPIC), self.resolve_topic_name(RGB_TOPIC)
        self.get_logger().info(f"active: {thermal_topic} + {rgb_topic} -> {self.resolve_topic_name('fused/image')}, "
                               f"{self.resolve_topic_name('segmentation/mask')} (sync: {self.sync.name})")
        return ret

    def camera_info_topic(self) -> str:
        """rgb/camera_info as remapped, else beside the (remapped) RGB image topic, as image_transport does."""
        resolved = self.resolve_topic_name(RGB_INFO_TOPIC)
        if resolved != self.resolve_topic_name(RGB_INFO_TOPIC, only_expand=True):
            return resolved  # remapped explicitly
        return camera_info_topic(self.resolve_topic_name(RGB_TOPIC))

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_pipeline()
        self._release_engine()  # give the GPU memory back while inactive
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
        self._release_engine()
        self._destroy_outputs()

    def _release_engine(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None and hasattr(engine, "release"):
            self._engine_thread.call(engine.release, timeout=ENGINE_TIMEOUT_S)

    def _stop_pipeline(self) -> None:
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._mailbox is not None:
            self._mailbox.close()
        if self._worker is not None:
            wait_futures([self._worker], ENGINE_TIMEOUT_S)
        self._mailbox, self._worker, self.sync = None, None, None

    def _destroy_outputs(self) -> None:
        for pub in [*self._pubs.values(), *self._info_pubs, self._class_info_pub, self._objects_pub]:
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._pubs, self._info_pubs, self._class_info_pub, self._objects_pub = {}, [], None, None

    def _restart_diag_timer(self, period: float) -> None:
        """On a steady clock: under use_sim_time a paused or finished bag must not silence /diagnostics."""
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        self._diag_timer = self.create_timer(period, self._report, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def destroy_node(self) -> None:
        self._engine_thread.close()
        self._diag_timer = self._diag_pub = None  # rclpy destroys them with the node
        super().destroy_node()

    def warmup_size(self) -> tuple[int, int]:
        """(h, w) to warm up at: the camera's once a frame was seen, else model.warmup_size, else 640x480. The
        engine then runs the network at its working resolution for that size, and the post-processing at the
        camera's."""
        if self._camera_size is not None:
            return self._camera_size
        given = params.parse_input_size(self.p.model_warmup_size) if self.p is not None else None
        return given if isinstance(given, tuple) else DEFAULT_WARMUP_SIZE

    def _warmup(self, iterations: int) -> None:
        """Dummy inferences so the first real frame does not pay for allocation / autotuning / graph capture."""
        p = self.p
        if iterations <= 0 or p is None:
            return
        t0 = time.perf_counter()
        size = self.warmup_size()
        if hasattr(self.engine, "warmup"):
            self.engine.warmup(size, iterations)
        else:
            for _ in range(iterations):
                self.engine.run(np.zeros(size, np.uint8), np.zeros((*size, 3), np.uint8))
        self._warmed_size = size
        self.get_logger().info(f"warm-up: {iterations} runs at {size[1]}x{size[0]} in {time.perf_counter() - t0:.2f} s")

    # ------------------------------------------------------------------ inputs

    def _make_sync(self) -> None:
        p = self.p
        assert p is not None
        self.sync = make_sync(p.sync_backend, p.sync_queue_size, p.sync_slop, p.sync_thermal_time_offset,
                              self._on_pair, self._on_stamp_jump)
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
        p = self.p
        if p is not None and p.model_max_input_pixels and msg.width * msg.height > p.model_max_input_pixels:
            self.stats.inc(f"refused_oversize.{name}")  # refused here: it never occupies the worker
            self.get_logger().warning(
                f"{name} frame {msg.width}x{msg.height} ({msg.width * msg.height / 1e6:.1f} MP) is above "
                f"model.max_input_pixels ({p.model_max_input_pixels / 1e6:.1f} MP): refused",
                throttle_duration_sec=self._warn_period())
            return
        sync = self.sync
        if sync is None:
            return
        clamped = sync.clamped
        try:
            (sync.add_thermal if stream == 0 else sync.add_rgb)(msg)
        except Exception as exc:  # no input may end the process: count, warn, carry on
            self.stats.inc("errors")
            self.get_logger().error(f"pairing failed on {name} ({type(exc).__name__}): {exc}",
                                    throttle_duration_sec=self._warn_period())
            return
        if sync.clamped != clamped:
            self.get_logger().warning(
                f"thermal stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d} + sync.thermal_time_offset "
                f"{sync.thermal_offset} s is before time 0: paired as 0 (stamps near zero: sim time, or a driver "
                "that does not stamp)", throttle_duration_sec=self._warn_period())

    # ------------------------------------------------------------------ time going backwards

    def _on_stamp_jump(self, stream: int, went_back: float) -> None:
        name = ("thermal", "rgb")[stream]
        self._time_jump(f"time_jumps.stamps_{name}",
                        f"{name} stamps went back {went_back:.3f} s (bag loop or clock reset)")

    def _on_clock_jump(self, jump: Any) -> None:
        try:
            sync = self.sync
            if sync is not None:
                sync.forget_after(self.get_clock().now().nanoseconds * 1e-9 + sync.jump_back)
            self._time_jump("time_jumps.clock", f"the node clock jumped back {-jump.delta.nanoseconds * 1e-9:.3f} s "
                            "(use_sim_time: /clock went back, e.g. a looping bag)")
        except Exception as exc:  # called from rcl's clock update: never let it raise
            self.stats.inc("errors")
            self.get_logger().error(f"handling a clock jump failed ({type(exc).__name__}): {exc}")

    def _time_jump(self, counter: str, why: str) -> None:
        """Pairing has dropped what came before the jump; the worker resets the thermal normaliser."""
        self.stats.inc(counter)
        self._engine_reset.set()
        self.get_logger().warning(f"{why}: pairing queues and thermal normaliser reset",
                                  throttle_duration_sec=self._warn_period())

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
                if not self.context.ok():
                    return  # Ctrl-C / shutdown while this frame ran: its publish failed, nothing is wrong
                self.stats.inc("errors")
                self.get_logger().error(f"frame failed ({type(exc).__name__}): {exc}",
                                        throttle_duration_sec=self._warn_period())

    def _process(self, thermal_msg: Image, rgb_msg: Image, t_paired: float, paired_ns: int) -> None:
        p, engine = self.p, self.engine
        if p is None or engine is None:
            return
        if self._engine_reset.is_set():
            self._engine_reset.clear()
            if hasattr(engine, "reset"):
                engine.reset()  # smoothed thermal bounds of the previous pass
                self.stats.inc("time_jumps.engine_resets")
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
        first_at_size = self._note_camera_size((rgb_msg.height, rgb_msg.width))
        want_color = self._pubs["color"].get_subscription_count() > 0
        want_overlay = self._pubs["overlay"].get_subscription_count() > 0
        want_objects = self._objects_pub.get_subscription_count() > 0
        want_conf = want_objects or self._pubs["confidence"].get_subscription_count() > 0
        result = engine.run(thermal, rgb, rgb_encoding=rgb_encoding, want_color=want_color, want_overlay=want_overlay,
                            want_confidence=want_conf)
        t2 = time.perf_counter()
        header = rgb_msg.header
        self._pubs["fused"].publish(conversions.numpy_to_image(result.fused_bgr, "bgr8", header))
        self._pubs["mask"].publish(conversions.numpy_to_image(result.mask, "mono8", header))
        if want_color and result.color is not None:
            self._pubs["color"].publish(conversions.numpy_to_image(result.color, "rgb8", header))
        if want_overlay and result.overlay is not None:
            self._pubs["overlay"].publish(conversions.numpy_to_image(result.overlay, "bgr8", header))
        confidence = getattr(result, "confidence", None)
        if want_conf and confidence is not None:
            self._pubs["confidence"].publish(conversions.numpy_to_image(confidence, "mono8", header))
        if want_objects:
            found = mask_objects(result.mask, engine.class_names, confidence=confidence, min_area=p.objects_min_area)
            self._objects_pub.publish(conversions.objects_to_msg(found, header))
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
        if first_at_size:  # a one-off (allocation, autotuning at this shape): reported, not in the windows
            self.stats.add_times({"first_frame_at_new_size_ms": latency})
        else:
            self.stats.add_times(times)
        self.stats.inc("processed")

    def _note_camera_size(self, size: tuple[int, int]) -> bool:
        """Record the camera's size; True for the first frame at a size the warm-up did not cover.

        That frame pays the warm-up's cost on the live path once: a second warm-up there would only
        make it later. The size is kept, so the next activation warms up at it.
        """
        if size == self._camera_size:
            return False
        self._camera_size = size
        p = self.p
        warmed = self._warmed_size
        if p is None or warmed is None or warmed == size:
            return False
        self.stats.inc("warmup_misses")
        self.get_logger().info(f"RGB frames are {size[1]}x{size[0]}, the warm-up ran at {warmed[1]}x{warmed[0]}: "
                               "this first frame pays the set-up at this size (deactivate + activate to warm up "
                               "at the camera's size)")
        return True

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
        if self._diag_pub is None:
            return
        if p is None:
            self._report_unconfigured()
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
        if self.last_error:  # e.g. activate failed: the node is up but produces nothing
            level = diagnostics.ERROR
            problems.insert(0, self.last_error)
        for pr in problems:
            if pr != "waiting for input":
                self.get_logger().warning(pr, throttle_duration_sec=p.diagnostics_warn_period)
        lat = timings.get("latency_ms")
        message = "; ".join(problems) if problems else (
            f"{new_pairs / period:.1f} pairs/s, latency p50 {lat['p50']:.1f} ms" if lat else "active, no frame yet")
        values = {
            "state": self.state_label(),
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
            "refused_oversize": {"thermal": counters.get("refused_oversize.thermal", 0),
                                 "rgb": counters.get("refused_oversize.rgb", 0)},
            "errors": counters.get("errors", 0),
            "time_jumps": {"stamps_thermal": counters.get("time_jumps.stamps_thermal", 0),
                           "stamps_rgb": counters.get("time_jumps.stamps_rgb", 0),
                           "clock": counters.get("time_jumps.clock", 0),
                           "engine_resets": counters.get("time_jumps.engine_resets", 0)},
            "clamped_stamps": sync_stats.get("clamped_stamps", 0),
            "camera_size": "x".join(map(str, self._camera_size[::-1])) if self._camera_size else "-",
            "warmup_size": "x".join(map(str, self._warmed_size[::-1])) if self._warmed_size else "-",
            "warmup_misses": counters.get("warmup_misses", 0),
            "stamp_diff_s": sync_stats.get("stamp_diff", {}),
            **{k: {s: v[s] for s in ("p50", "p99", "max")} for k, v in sorted(timings.items())},
        }
        self._diag_pub.publish(diagnostics.make_array(self.get_clock().now().to_msg(),
                                                      f"{self.get_name()}: fusion pipeline",
                                                      self.get_fully_qualified_name(), level, message, values))

    def _report_unconfigured(self) -> None:
        """Before a successful configure: ERROR with the reasons if configure failed, else OK (waiting)."""
        level = diagnostics.ERROR if self.last_error else diagnostics.OK
        message = self.last_error or f"{self.state_label()}: waiting for the configure transition"
        values = {"state": self.state_label(), "errors": "; ".join(self.configure_errors) or "-"}
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

    def _check_and_apply_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Humble has no post-set callbacks: check, then apply in the same callback."""
        result = self._check_parameters(changes)
        if result.successful:
            self._apply_parameters(changes)
        return result

    def _apply_parameters(self, changes: list[Parameter]) -> None:
        for c in changes:  # a valid value set at runtime replaces a rejected one from the params file
            self._param_errors.pop(c.name, None)
        if self.p is None:
            return  # read at the next configure
        ours = [c for c in changes if c.name in params.SPEC]  # not use_sim_time & co: rclpy applies those
        live = [c for c in ours if params.SPEC[c.name].live]
        later = [c.name for c in ours if not params.SPEC[c.name].live]
        for c in live:
            setattr(self.p, c.name.replace(".", "_"), c.value if not isinstance(c.value, list) else list(c.value))
        if any(c.name.startswith("sync.") for c in live) and self.sync is not None:
            self._make_sync()  # the queued messages are dropped; pairing restarts with the new settings
        if later:
            self.get_logger().info(f"{', '.join(later)} take effect at the next configure (deactivate, cleanup, "
                                   "configure, activate)")


def main(args: list[str] | None = None, engine_factory: EngineFactory | None = None) -> int:
    """`mafs-node` / `ros2 run mafs_ros mafs_node` [--local]: the robot's DDS set-up unless --local (one host)."""
    argv, local = split_local_flag(list(sys.argv if args is None else args))
    configure_entry_point(local)
    rclpy.init(args=argv)
    node: MafsNode | None = None
    try:  # Ctrl-C at any point of start-up ends cleanly
        node = MafsNode(engine_factory=engine_factory)
        executor = SingleThreadedExecutor()  # before the first log line: a Ctrl-C inside its __init__ leaves a
        executor.add_node(node)              # half-built executor whose __del__ prints a traceback
        node.get_logger().info(describe_dds(get_rmw_implementation_identifier(), node.context.get_domain_id()))
        if node.get_parameter("autostart").value:
            node.autostart()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT shuts the context down from rclpy's signal handler; a spin that was about to wait then fails
        # with RCLError ("context is not valid"). That is the normal end, not an error to print.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
