"""Approximate-time pairing of two stamped streams (thermal + RGB), without ROS.

Same semantics as ROS 2 ``message_filters.ApproximateTimeSynchronizer`` (Python) for two inputs,
so the node behaves the same whether or not message_filters is installed:

- each stream keeps a queue of at most ``queue_size`` items keyed by stamp (a repeated stamp
  replaces the queued item); overflow evicts the oldest stamp;
- when an item arrives, the other queue is searched for the stamp closest to it; if the
  difference is strictly less than ``slop`` both items are emitted and removed;
- unmatched items stay queued until evicted.

One opt-in departure, ``jump_back`` (the node uses it): time going backwards (a looping bag, a
robot whose clock is reset). A stamp more than ``jump_back`` seconds older than its stream's
previous one drops every queued item stamped later than it; without that both queues stay full
of end-of-bag stamps, every new message is evicted on arrival and almost nothing pairs again
(message_filters does exactly that, and so does this class with ``jump_back=None``).

Written here rather than imported because message_filters is a ROS package (mafs_core must not
import ROS) and is not on pip; the extras are a per-stream clock offset and statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Match(Generic[T]):
    """One pair. ``items[i]`` came from stream ``i``; ``diff`` = stamp0 - stamp1 after offsets (s)."""

    items: tuple[T, T]
    stamps: tuple[float, float]  # raw stamps (s), before offsets
    diff: float


@dataclass
class DiffStats:
    """Running statistics of matched stamp differences (Welford; O(1) memory)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    abs_max: float = 0.0
    last: float = math.nan

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)
        self.min, self.max = min(self.min, x), max(self.max, x)
        self.abs_max = max(self.abs_max, abs(x))
        self.last = x

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 0.0

    def to_dict(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0}
        return {"count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
                "abs_max": self.abs_max, "last": self.last}


@dataclass
class PairerStats:
    received: list[int] = field(default_factory=lambda: [0, 0])
    unmatched: list[int] = field(default_factory=lambda: [0, 0])  # evicted by overflow or replaced by same stamp
    matched: int = 0
    diff: DiffStats = field(default_factory=DiffStats)
    jumps_back: list[int] = field(default_factory=lambda: [0, 0])  # time went backwards on this stream


class ApproxTimePairer(Generic[T]):
    """Pairs items of stream 0 and stream 1 whose (offset-corrected) stamps differ by less than ``slop``.

    ``offsets[i]`` (s) is added to stream i's stamps before matching (a fixed clock offset between
    cameras); ``Match.stamps`` keep the raw values. Not thread-safe: callers serialise ``add``.
    """

    def __init__(self, queue_size: int = 10, slop: float = 0.05, offsets: tuple[float, float] = (0.0, 0.0),
                 jump_back: float | None = None):
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not slop > 0:
            raise ValueError(f"slop must be > 0 s, got {slop}")
        self.queue_size = int(queue_size)
        self.slop_ns = round(slop * 1e9)
        self.offsets_ns = (round(offsets[0] * 1e9), round(offsets[1] * 1e9))
        # None: never (message_filters' behaviour); never below 2 x slop, where a late frame may still pair
        self.jump_back_ns = None if jump_back is None else max(round(jump_back * 1e9), 2 * self.slop_ns)
        # stamp_ns (offset-corrected) -> (raw stamp s, item); dicts keep insertion order like message_filters.
        self.queues: tuple[dict[int, tuple[float, T]], dict[int, tuple[float, T]]] = ({}, {})
        self.stats = PairerStats()
        self.last_stamp: list[float] = [math.nan, math.nan]  # latest offset-corrected stamp per stream (s)

    @property
    def slop(self) -> float:
        return self.slop_ns / 1e9

    def pending(self) -> tuple[int, int]:
        return len(self.queues[0]), len(self.queues[1])

    def reset(self) -> None:
        """Forget queued items (e.g. when the clock jumps back in a looping bag); statistics stay."""
        for i, q in enumerate(self.queues):
            self.stats.unmatched[i] += len(q)
            q.clear()
        self.last_stamp = [math.nan, math.nan]

    def forget_after(self, stamp: float) -> int:
        """Drop queued items stamped (offset-corrected) later than ``stamp`` s: they are from before a jump back."""
        limit, dropped = round(stamp * 1e9), 0
        for i, q in enumerate(self.queues):
            for key in [k for k in q if k > limit]:
                del q[key]
                self.stats.unmatched[i] += 1
                dropped += 1
            if self.last_stamp[i] > stamp:
                self.last_stamp[i] = math.nan
        return dropped

    def jumped_back(self, stream: int, stamp: float) -> bool:
        """Whether ``stamp`` (raw, s) lies more than ``jump_back`` before ``stream``'s previous stamp."""
        last = self.last_stamp[stream]
        key = round(stamp * 1e9) + self.offsets_ns[stream]
        return self.jump_back_ns is not None and not math.isnan(last) and key < round(last * 1e9) - self.jump_back_ns

    def add(self, stream: int, stamp: float, item: T) -> Match[T] | None:
        """Queue ``item`` stamped ``stamp`` (s) on ``stream`` (0 or 1); return the pair it completes, if any."""
        if stream not in (0, 1):
            raise ValueError(f"stream must be 0 or 1, got {stream}")
        key = round(stamp * 1e9) + self.offsets_ns[stream]
        if self.jumped_back(stream, stamp):
            self.stats.jumps_back[stream] += 1
            self.forget_after(key / 1e9 + self.jump_back_ns / 1e9)
        mine, other = self.queues[stream], self.queues[1 - stream]
        self.stats.received[stream] += 1
        self.last_stamp[stream] = key / 1e9
        if key in mine:  # message_filters overwrites an item with the same stamp
            self.stats.unmatched[stream] += 1
        mine[key] = (stamp, item)
        while len(mine) > self.queue_size:
            del mine[min(mine)]
            self.stats.unmatched[stream] += 1
        if key not in mine:  # it was older than everything queued and got evicted at once
            return None
        best, best_delta = None, None
        for s in other:  # closest stamp wins; ties go to the earlier-queued item (stable sort upstream)
            delta = abs(s - key)
            if delta < self.slop_ns and (best_delta is None or delta < best_delta):
                best, best_delta = s, delta
        if best is None:
            return None
        raw_other, item_other = other.pop(best)
        raw_mine, item_mine = mine.pop(key)
        self.stats.matched += 1
        if stream == 0:
            items, stamps, diff_ns = (item_mine, item_other), (raw_mine, raw_other), key - best
        else:
            items, stamps, diff_ns = (item_other, item_mine), (raw_other, raw_mine), best - key
        self.stats.diff.add(diff_ns / 1e9)
        return Match(items=items, stamps=stamps, diff=diff_ns / 1e9)

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {"received": list(s.received), "matched": s.matched, "unmatched": list(s.unmatched),
                "pending": list(self.pending()), "stamp_diff": s.diff.to_dict(), "jumps_back": list(s.jumps_back)}
