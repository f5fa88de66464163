"""Thermal/RGB pairing backends with one interface.

``message_filters.ApproximateTimeSynchronizer`` when importable (a ROS install), else
``mafs_core.pairing.ApproxTimePairer`` (same semantics, pure Python). The node feeds messages in
with ``add_thermal``/``add_rgb`` from its own subscriptions (so QoS, validation and counters are
the same for both) and gets ``on_pair(thermal_msg, rgb_msg)`` back, in the calling thread.
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


def available_backends() -> list[str]:
    """Concrete backends usable in this environment."""
    return (["message_filters"] if message_filters is not None else []) + ["builtin"]


def stamp_seconds(msg: Any) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


class PairSync:
    """Common part: offset, statistics (identical for both backends) and a lock around the backend."""

    name = "base"

    def __init__(self, queue_size: int, slop: float, thermal_offset: float, on_pair: PairCallback):
        self.queue_size, self.slop, self.thermal_offset = queue_size, slop, thermal_offset
        self.on_pair = on_pair
        self.received = [0, 0]
        self.matched = 0
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
            self.received[stream] += 1
            self.last_stamp[stream] = stamp
            pair = self._push(stream, msg)
            if pair is not None:
                self.matched += 1
                self.diff.add(stamp_seconds(pair[0]) + self.thermal_offset - stamp_seconds(pair[1]))
        if pair is not None:
            self.on_pair(*pair)

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
                    "last_stamp": list(self.last_stamp)}


class BuiltinSync(PairSync):
    name = "builtin"

    def __init__(self, queue_size: int, slop: float, thermal_offset: float, on_pair: PairCallback):
        super().__init__(queue_size, slop, thermal_offset, on_pair)
        self.pairer: ApproxTimePairer = ApproxTimePairer(queue_size, slop, offsets=(thermal_offset, 0.0))

    def _push(self, stream: int, msg: Any) -> tuple[Any, Any] | None:
        match = self.pairer.add(stream, stamp_seconds(msg), msg)
        return match.items if match is not None else None

    def pending(self) -> tuple[int, int]:
        return self.pairer.pending()

    def queued_stamps(self) -> tuple[list[int], list[int]]:
        return list(self.pairer.queues[0]), list(self.pairer.queues[1])


class _Shifted:
    """A message seen by message_filters with the thermal offset applied to its stamp."""

    __slots__ = ("header", "msg")

    def __init__(self, msg: Any, offset_ns: int):
        self.msg = msg
        ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec + offset_ns
        self.header = Header(stamp=TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000))


class MessageFiltersSync(PairSync):
    name = "message_filters"

    def __init__(self, queue_size: int, slop: float, thermal_offset: float, on_pair: PairCallback):
        super().__init__(queue_size, slop, thermal_offset, on_pair)
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
        self._inputs[stream].signalMessage(_Shifted(msg, self._offset_ns) if stream == 0 and self._offset_ns else msg)
        return self._out

    def pending(self) -> tuple[int, int]:
        return len(self._sync.queues[0]), len(self._sync.queues[1])

    def queued_stamps(self) -> tuple[list[int], list[int]]:
        return list(self._sync.queues[0]), list(self._sync.queues[1])


def make_sync(backend: str, queue_size: int, slop: float, thermal_offset: float, on_pair: PairCallback) -> PairSync:
    """``backend``: auto (message_filters if importable, else builtin) | message_filters | builtin."""
    if backend not in BACKENDS:
        raise ValueError(f"sync.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = available_backends()[0]
    cls = MessageFiltersSync if backend == "message_filters" else BuiltinSync
    return cls(queue_size, slop, thermal_offset, on_pair)
