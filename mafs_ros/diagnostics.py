"""Pipeline counters and timing windows, and their /diagnostics (diagnostic_msgs) form.

diagnostic_updater is not on pip; this is the part of it the node needs: one DiagnosticStatus per
period with flat key/values. Timings are kept over a sliding window of the last ``WINDOW`` frames
(~30 s at 30 Hz) so a reader gets stable p50/p99 rather than one period's handful of samples.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

WINDOW = 1024
OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


class PipelineStats:
    """Thread-safe: the executor thread counts inputs, the worker thread adds timings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = defaultdict(int)
        self.timings: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def add_times(self, times_ms: dict[str, float]) -> None:
        with self._lock:
            for k, v in times_ms.items():
                self.timings[k].append(float(v))

    def snapshot(self) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
        with self._lock:
            counters = dict(self.counters)
            windows = {k: np.asarray(v) for k, v in self.timings.items() if v}
        summary = {k: {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
                       "mean": float(a.mean()), "max": float(a.max()), "n": int(a.size)} for k, a in windows.items()}
        return counters, summary


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def flatten(values: dict[str, Any], prefix: str = "") -> list[KeyValue]:
    """Nested dict -> KeyValues with dotted keys ("latency_ms.p50")."""
    out: list[KeyValue] = []
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flatten(v, key + ".")
        elif isinstance(v, list | tuple):
            out.append(KeyValue(key=key, value=", ".join(_fmt(x) for x in v)))
        else:
            out.append(KeyValue(key=key, value=_fmt(v)))
    return out


def make_array(stamp, name: str, hardware_id: str, level: int, message: str, values: dict[str, Any]
               ) -> DiagnosticArray:
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                              values=flatten(values))
    arr = DiagnosticArray(status=[status])
    arr.header.stamp = stamp
    return arr


def to_dict(status: DiagnosticStatus) -> dict[str, str]:
    """Inverse of ``flatten`` for readers (tests, benchmarks): dotted key -> string value."""
    return {kv.key: kv.value for kv in status.values}
