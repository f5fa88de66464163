"""`mafs bag play`: publish a rosbag2 through rclpy, for pip installs where `ros2 bag play` does not exist.

Messages go out as the bag stores them (serialized CDR, `Publisher.publish(bytes)`), exactly as
rosbag2's player does: no per-field conversion, so 640x480 images cost one memcpy. Timing follows the
recorded log times scaled by `--rate`; `--clock` publishes /clock (rosgraph_msgs/Clock) from bag time so
`use_sim_time` nodes see the bag's clock. On a ROS distribution, `ros2 bag play` does the same job.

DDS is the robot's (RMW, domain, discovery range, profile from the environment); `--local`
(or MAFS_LOCAL_DDS=1) applies the single-host loopback set-up instead.
"""

from __future__ import annotations

import argparse
import importlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mafs_core.bagio import BagError, BagReader


def message_class(msgtype: str) -> type:
    """The rclpy class of 'pkg/msg/Name'; BagError naming the type when its Python package is not installed."""
    pkg, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        raise BagError(f"unknown message type {msgtype!r}: no rclpy message package {pkg!r} installed") from None


@dataclass
class PlayOptions:
    rate: float = 1.0
    clock: float = 0.0  # /clock rate in Hz; 0 = no /clock
    loop: bool = False
    topics: Sequence[str] | None = None
    start_delay: float = 0.0
    wait_for_subscribers: int = 0  # wait until every played topic has this many subscriptions
    wait_timeout: float = 30.0
    depth: int = 10


@dataclass
class PlayStats:
    published: dict[str, int] = field(default_factory=dict)
    clock_messages: int = 0
    skipped_topics: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    loops: int = 0


class BagPlayer:
    """Plays one bag on an rclpy node.

    `on_publish(topic, log_ns, data, wall_time)` lets callers measure latency. `gate(topic, log_ns)`, if
    given, is called before each message and may block (flow control: e.g. wait until a slow consumer has
    answered the previous frame); bag time pauses meanwhile, so /clock and stamps stay consistent.
    """

    def __init__(self, node, bag: str | Path, opts: PlayOptions | None = None,
                 on_publish: Callable[[str, int, bytes, float], None] | None = None,
                 gate: Callable[[str, int], None] | None = None):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self.node, self.bag, self.opts = node, Path(bag), opts or PlayOptions()
        self.on_publish, self.gate = on_publish, gate
        self.stats = PlayStats()
        self._stop = threading.Event()
        with BagReader(self.bag) as reader:
            types = reader.topics
        wanted = list(self.opts.topics) if self.opts.topics else sorted(types)
        missing = [t for t in wanted if t not in types]
        if missing:
            raise BagError(f"topic(s) {missing} not in bag {self.bag} (topics: {sorted(types)})")
        # Reliable keep-last: matches reliable and best-effort subscribers alike.
        qos = QoSProfile(depth=self.opts.depth, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = {}
        for topic in wanted:
            try:
                self.publishers[topic] = node.create_publisher(message_class(types[topic]), topic, qos)
            except BagError as exc:
                if self.opts.topics:  # asked for by name: that is an error, not a skip
                    raise
                self.stats.skipped_topics[topic] = str(exc)
                node.get_logger().warning(f"skipping {topic}: {exc}")
        self._Clock = Clock
        self.clock_pub = node.create_publisher(Clock, "/clock", 10) if self.opts.clock > 0 else None

    def stop(self) -> None:
        self._stop.set()

    def _publish_clock(self, bag_ns: int) -> None:
        msg = self._Clock()
        msg.clock.sec, msg.clock.nanosec = bag_ns // 1_000_000_000, bag_ns % 1_000_000_000
        self.clock_pub.publish(msg)
        self.stats.clock_messages += 1

    def wait_for_subscribers(self) -> None:
        n = self.opts.wait_for_subscribers
        if n <= 0:
            return
        deadline = time.monotonic() + self.opts.wait_timeout
        while any(p.get_subscription_count() < n for p in self.publishers.values()):
            if time.monotonic() > deadline or self._stop.is_set():
                counts = {t: p.get_subscription_count() for t, p in self.publishers.items()}
                raise BagError(f"timed out after {self.opts.wait_timeout:.0f} s waiting for {n} subscriber(s) "
                               f"per topic: {counts}")
            time.sleep(0.05)
        time.sleep(0.5)  # discovery is two-sided: let the subscribers match us too

    def _sleep_until(self, wall: float, bag_at: Callable[[float], int]) -> None:
        """Sleep until `wall` (perf_counter), publishing /clock at the asked rate meanwhile."""
        period = 1.0 / self.opts.clock if self.clock_pub else None
        while not self._stop.is_set():
            now = time.perf_counter()
            if now >= wall:
                return
            if period is None:
                time.sleep(min(wall - now, 0.1))
                continue
            self._publish_clock(bag_at(now))
            time.sleep(min(wall - now, period))

    def play(self) -> PlayStats:
        """Publish the bag (once, or until stop() with loop); returns counts."""
        self.wait_for_subscribers()
        if self.opts.start_delay > 0:
            time.sleep(self.opts.start_delay)
        t_start = time.perf_counter()
        rate = self.opts.rate if self.opts.rate > 0 else 1.0
        while not self._stop.is_set():
            with BagReader(self.bag) as reader:
                t0_wall, t0_bag = None, None
                for topic, _msgtype, log_ns, data in reader.raw(list(self.publishers)):
                    if self._stop.is_set():
                        break
                    if t0_wall is None:
                        t0_wall, t0_bag = time.perf_counter(), log_ns
                    wall = t0_wall + (log_ns - t0_bag) * 1e-9 / rate

                    def bag_at(now: float, _w=t0_wall, _b=t0_bag) -> int:
                        return _b + int((now - _w) * rate * 1e9)

                    self._sleep_until(wall, bag_at)
                    if self.gate is not None:
                        t_gate = time.perf_counter()
                        self.gate(topic, log_ns)
                        paused = time.perf_counter() - max(t_gate, wall)
                        if paused > 0:  # bag time stood still while the gate held us
                            t0_wall += paused
                    if self.clock_pub:
                        self._publish_clock(log_ns)
                    self.publishers[topic].publish(bytes(data))
                    if self.on_publish is not None:
                        self.on_publish(topic, log_ns, data, time.perf_counter())
                    self.stats.published[topic] = self.stats.published.get(topic, 0) + 1
            self.stats.loops += 1
            if not self.opts.loop:
                break
        self.stats.wall_s = time.perf_counter() - t_start
        self.flush()
        return self.stats

    def flush(self, timeout_s: float = 2.0) -> None:
        """Wait until reliable subscribers acknowledged every sample: a player that exits right after its last
        publish would otherwise take that sample with it (seen: the final thermal image went missing)."""
        from rclpy.duration import Duration

        for pub in self.publishers.values():
            pub.wait_for_all_acked(Duration(nanoseconds=int(timeout_s * 1e9)))


def _cmd_play(args: argparse.Namespace) -> int:
    from mafs_ros.env import configure_entry_point, describe_dds

    configure_entry_point(args.local)
    import rclpy
    from rclpy.utilities import get_rmw_implementation_identifier

    rclpy.init()
    node = rclpy.create_node("mafs_bag_player")
    print(describe_dds(get_rmw_implementation_identifier(), node.context.get_domain_id()), flush=True)
    try:
        opts = PlayOptions(rate=args.rate, clock=args.clock, loop=args.loop, topics=args.topics,
                           start_delay=args.start_delay, wait_for_subscribers=args.wait_for_subscribers,
                           wait_timeout=args.wait_timeout)
        player = BagPlayer(node, args.bag, opts)
        print(f"playing {args.bag} at {args.rate}x: {', '.join(player.publishers)}"
              f"{f' + /clock at {args.clock:g} Hz' if player.clock_pub else ''}")
        stats = player.play()
    except BagError as exc:
        print(f"mafs bag play: error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    total = sum(stats.published.values())
    print(f"published {total} messages in {stats.wall_s:.2f} s ({stats.loops} pass(es)): {stats.published}")
    return 0


def register(subparsers, registry: dict) -> None:
    bag = registry.get("bag")
    if bag is None:  # mafs_core.bag did not register (should not happen): nothing to hang `play` on
        return
    p = bag.add_parser("play", help="publish a bag through rclpy (like `ros2 bag play`)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", help="rosbag2 directory, .mcap or .db3")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    p.add_argument("--clock", type=float, nargs="?", const=100.0, default=0.0, metavar="HZ",
                   help="publish /clock from bag time (default 100 Hz when given) for use_sim_time nodes")
    p.add_argument("--loop", action="store_true", help="replay until interrupted")
    p.add_argument("--topics", nargs="+", help="only these topics (default: all)")
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds to wait before the first message")
    p.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                   help="wait until every played topic has N subscriptions")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="seconds to wait for subscribers")
    p.add_argument("--local", action="store_true",
                   help="single-host DDS (loopback discovery, shared-memory profile) instead of the environment's")
    p.set_defaults(func=_cmd_play)
