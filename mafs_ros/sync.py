"""Thermal/RGB pairing backends with one interface.

``message_filters.ApproximateTimeSynchronizer`` when importable (a ROS install), else
``mafs_core.pairing.ApproxTimePairer`` (same semantics, pure Python). The node feeds messages in
with ``add_thermal``/``add_rgb`` from its own subscriptions (so QoS, validation and counters are
the same for both) and gets ``on_pair(thermal_msg, rgb_msg)`` back, in the calling thread.

Time going backwards (a looping bag, a clock reset) is detected here for both backends: a stamp
more than ``JUMP_BACK_S`` (at least 2 x slop) older than its stream's previous one drops the
queued items stamped after it and calls ``on_jump``, so pairing resumes at once instead of
starving behind queues full of end-of-bag stamps.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from builtin_interfaces.msg import Time as TimeMsg
from std_msgs.msg import Header

from mafs_core.pairing import ApproxTimePairer, DiffStats

try:
    import message_filters
except ImportError:  # pip install: no message_filters wheel
    message_filters = None

BACKENDS = ("auto", "message_filters", "builtin")
PairCallback = Callable[[Any, Any], None]
JumpCallback = Callable[[int, float], None]  # (stream, seconds it went back)
JUMP_BACK_S = 1.0


def available_backends() -> list[str]:
    """Concrete backends usable in this environment."""
    return (["message_filters"] if message_filters is not None else []) + ["builtin"]


def stamp_seconds(msg: Any) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


class PairSync:
    """Common part: offset, statistics (identical for both backends) and a lock around the backend."""

    name = "base"

    def __init__(self, queue_size: int, slop: float, thermal_offset: float, on_pair: PairCallback,
                 on_jump: JumpCallback | None = None):
        self.queue_size, self.slop, self.thermal_offset = queue_size, slop, thermal_offset
        self.on_pair, self.on_jump = on_pair, on_jump
        self.jump_back = max(JUMP_BACK_S, 2 * slop)
        self.received = [0, 0]
        self.matched = 0
        self.jumps_back = [0, 0]
        self.clamped = 0  # shifted thermal stamps that would have been negative (message_filters path)
        self.diff = DiffStats()
        self.last_stamp = [math.nan, math.nan]  # latest offset-corrected stamp per stream (s)
        self._lock = threading.Lock()

    def add_thermal(self, msg: Any) -> None:
        self._add(0, msg)

    def add_rgb(self, msg: Any) -> None:
        self._add(1, msg)

    def _add(self, stream: int, msg: Any) -> None:
        stamp = stamp_seconds(msg) + (self.thermal_offset if stream == 0 else 0.0)
        with self._lock:
            went_back = self.last_stamp[stream] - stamp
            jumped = went_back > self.jump_back  # False while last_stamp is NaN
            if jumped:
                self.jumps_back[stream] += 1
                self._forget_after_locked(stamp + self.jump_back)
            self.received[stream] += 1
            self.last_stamp[stream] = stamp
            pair = self._push(stream, msg)
            if pair is not None:
                self.matched += 1
                self.diff.add(stamp_seconds(pair[0]) + self.thermal_offset - stamp_seconds(pair[1]))
        if jumped and self.on_jump is not None:
            self.on_jump(stream, went_back)
        if pair is not None:
            self.on_pair(*pair)

    def forget_after(self, stamp: float) -> int:
        """Drop queued messages stamped (offset applied) after ``stamp`` s, e.g. after the clock jumped back."""
        with self._lock:
            return self._forget_after_locked(stamp)

    def _forget_after_locked(self, stamp: float) -> int:
        for i in (0, 1):
            if self.last_stamp[i] > stamp:
                self.last_stamp[i] = math.nan
        return self._drop_after(round(stamp * 1e9))

    def _drop_after(self, limit_ns: int) -> int:
        raise NotImplementedError

    def _push(self, stream: int, msg: Any) -> tuple[Any, Any] | None:
        raise NotImplementedError

    def pending(self) -> tuple[int, int]:
        raise NotImplementedError

    def queued_stamps(self) -> tuple[list[int], list[int]]:
        """Offset-corrected stamps (ns) waiting for a partner, per stream."""
        raise NotImplementedError

    def closest_gap(self) -> float:
        """Latest thermal stamp (offset applied) minus the closest RGB stamp still queued, s: why nothing pairs.

        Signed, so the warning can say which way the clocks are off.
        """
        with self._lock:
            t = self.last_stamp[0]
            rgb = [ns * 1e-9 for ns in self.queued_stamps()[1]] or [self.last_stamp[1]]
            return min((t - r for r in rgb), key=abs)

    def stats(self) -> dict[str, Any]:
        """received/matched/unmatched per stream (unmatched = left the queue without a partner)."""
        with self._lock:
            pending = self.pending()
            unmatched = [self.received[i] - self.matched - pending[i] for i in (0, 1)]
            return {"backend": self.name, "received": list(self.received), "matched": self.matched,
                    "unmatched": unmatched, "pending": list(pending), "stamp_diff": self.diff.to_dict(),
                    "last_stamp": list(self.last_stamp), "jumps_back": list(self.jumps_back),
                    "clamped_stamps": self.clamped}


class BuiltinSync(PairSync):
    name = "builtin"

    def __init__(self, queue_size: int, slop: float, thermal_offset: float, on_pair: PairCallback,
                 on_jump: JumpCallback | None = None):
        super().__init__(queue_size, slop, thermal_offset, on_pair, on_jump)
        # jumps are detected above, the same way for both backends
        self.pairer: ApproxTimePairer = ApproxTimePairer(queue_size, slop, offsets=(thermal_offset, 0.0))

    def _push(self, stream: int, msg: Any) -> tuple[Any, Any] | None:
        match = self.pairer.add(stream, stamp_seconds(msg), msg)
        return match.items if match is not None else None

    def pending(self) -> tuple[int, int]:
        return self.pairer.pending()

    def queued_stamps(self) -> tuple[list[int], list[int]]:
        return list(self.pairer.queues[0]), list(self.pairer.queues[1])

    def _drop_after(self, limit_ns: int) -> int:
        return self.pairer.forget_after(limit_ns * 1e-9)


def shifted_stamp(stamp: Any, offset_ns: int) -> tuple[TimeMsg, bool]:
    """``stamp`` + ``offset_ns`` as a Time message, clamped at 0; True when clamped.

    A negative thermal offset on stamps near zero (sim time, drivers that leave stamps at 0) would
    give a negative ``sec``, which ``rclpy.time.Time.from_msg`` (inside message_filters) rejects
    with an exception in the subscription callback, ending the process.
    """
    ns = stamp.sec * 1_000_000_000 + stamp.nanosec + offset_ns
    clamped = ns < 0
    ns = max(ns, 0)
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), clamped


class _Shifted:
    """A message seen by message_filters with the thermal offset applied to its stamp (never negative)."""

    __slots__ = ("clamped", "header", "msg")

    def __init__(self, msg: Any, offset_ns: int):
        self.msg = msg
        stamp, self.clamped = shifted_stamp(msg.header.stamp, offset_ns)
        self.header = Header(stamp=stamp)


class MessageFiltersSync(PairSync):
    name = "message_filters"

    def __init__(self, queue_size: int, slop: float, thermal_offset: float, on_pair: PairCallback,
                 on_jump: JumpCallback | None = None):
        super().__init__(queue_size, slop, thermal_offset, on_pair, on_jump)
        if message_filters is None:
            raise ImportError("message_filters is not importable (install ros-<distro>-message-filters)")
        self._inputs = (message_filters.SimpleFilter(), message_filters.SimpleFilter())
        self._sync = message_filters.ApproximateTimeSynchronizer(list(self._inputs), queue_size, slop)
        self._sync.registerCallback(self._collect)
        self._offset_ns = round(thermal_offset * 1e9)
        self._out: tuple[Any, Any] | None = None

    def _collect(self, thermal: Any, rgb: Any) -> None:
        self._out = (thermal.msg if isinstance(thermal, _Shifted) else thermal, rgb)

    def _push(self, stream: int, msg: Any) -> tuple[Any, Any] | None:
        self._out = None
        if stream == 0 and self._offset_ns:
            msg = _Shifted(msg, self._offset_ns)
            self.clamped += msg.clamped
        self._inputs[stream].signalMessage(msg)
        return self._out

    def pending(self) -> tuple[int, int]:
        return len(self._sync.queues[0]), len(self._sync.queues[1])

    def queued_stamps(self) -> tuple[list[int], list[int]]:
        # message_filters keys its queues by rclpy.time.Time
        return ([getattr(t, "nanoseconds", t) for t in self._sync.queues[0]],
                [getattr(t, "nanoseconds", t) for t in self._sync.queues[1]])

    def _drop_after(self, limit_ns: int) -> int:
        dropped = 0
        for q in self._sync.queues:
            for t in [t for t in q if getattr(t, "nanoseconds", t) > limit_ns]:
                del q[t]
                dropped += 1
        return dropped


def make_sync(backend: str, queue_size: int, slop: float, thermal_offset: float, on_pair: PairCallback,
              on_jump: JumpCallback | None = None) -> PairSync:
    """``backend``: auto (message_filters if importable, else builtin) | message_filters | builtin."""
    if backend not in BACKENDS:
        raise ValueError(f"sync.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = available_backends()[0]
    cls = MessageFiltersSync if backend == "message_filters" else BuiltinSync
    return cls(queue_size, slop, thermal_offset, on_pair, on_jump)
