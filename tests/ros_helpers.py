"""Small helpers shared by the ROS tests (not a test module)."""

from __future__ import annotations

import array
import time
from collections.abc import Callable

import numpy as np
from sensor_msgs.msg import Image


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def make_image(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    msg = Image(height=arr.shape[0], width=arr.shape[1], encoding=encoding, step=arr.strides[0],
                data=array.array("B", arr.tobytes()))
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg
