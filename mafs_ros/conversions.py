"""sensor_msgs/Image <-> numpy.

cv_bridge is used when importable (a ROS install); otherwise, and for the rows cv_bridge gets
wrong (a ``step`` that is not a multiple of the pixel size, e.g. mono16 rows padded to an odd
byte count), the few lines below do the same job: they honour ``step`` and ``is_bigendian``.

Validation (``check_image``) is O(1) and runs in the subscription callback, so a malformed
message is counted and dropped before it can take a pairing slot.
"""

from __future__ import annotations

import array
import sys

import cv2
import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from mafs_core.io import IMAGE_ENCODINGS, ImageFormatError, image_to_array

try:  # a ROS distribution; absent on a pip install
    from vision_msgs.msg import BoundingBox2D, Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:
    Detection2DArray = None
try:
    from cv_bridge import CvBridge

    _BRIDGE: CvBridge | None = CvBridge()
except ImportError:
    _BRIDGE = None

THERMAL_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1", "32FC1", "64FC1", "rgb8", "bgr8")
RGB_ENCODINGS = ("bgr8", "rgb8", "mono8", "bgra8", "rgba8")  # bgra8/rgba8: ZED, simulators
BACKENDS = ("cv_bridge", "numpy") if _BRIDGE is not None else ("numpy",)


class ImageError(ImageFormatError):
    """A message that cannot be an image of its declared encoding (bad input, not a bug)."""


def check_image(msg: Image, allowed: tuple[str, ...]) -> None:
    """Raise ImageError unless ``msg`` is a well-formed image in one of ``allowed`` encodings."""
    if msg.encoding not in allowed:
        raise ImageError(f"encoding '{msg.encoding}' not supported here (use one of {', '.join(allowed)})")
    dtype, channels = IMAGE_ENCODINGS[msg.encoding]
    if msg.height == 0 or msg.width == 0:
        raise ImageError(f"empty image ({msg.width}x{msg.height})")
    row = msg.width * channels * dtype.itemsize
    if msg.step < row:
        raise ImageError(f"step {msg.step} < width x pixel size = {row}")
    if len(msg.data) != msg.height * msg.step:
        raise ImageError(f"data has {len(msg.data)} bytes, height x step = {msg.height * msg.step}")


def image_to_numpy(msg: Image, backend: str = BACKENDS[0]) -> np.ndarray:
    """HxW or HxWxC array in native byte order; a view of ``msg.data`` when rows are unpadded."""
    dtype, _ = IMAGE_ENCODINGS[msg.encoding]
    if backend == "cv_bridge" and _BRIDGE is not None and msg.step % dtype.itemsize == 0:
        return np.asarray(_BRIDGE.imgmsg_to_cv2(msg))
    try:
        return image_to_array(msg)  # the core's decoder, shared with the bag tools
    except ImageFormatError as exc:
        raise ImageError(str(exc)) from exc


def thermal_to_numpy(msg: Image, backend: str = BACKENDS[0]) -> tuple[np.ndarray, int]:
    """Thermal message -> HxW grey (uint8/uint16/float32) and the number of non-finite pixels replaced.

    False-colour rgb8/bgr8 becomes luminance. NaN/inf (radiometric cameras mark invalid pixels so)
    become the coldest finite value; an image with no finite pixel raises ImageError.
    """
    img = image_to_numpy(msg, backend)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if msg.encoding == "rgb8" else cv2.COLOR_BGR2GRAY)
    if img.dtype.kind != "f":
        return img, 0
    img = img.astype(np.float32, copy=False)
    bad = ~np.isfinite(img)
    n_bad = int(bad.sum())
    if n_bad:
        if n_bad == img.size:
            raise ImageError("thermal image has no finite pixel")
        img = img.copy() if not img.flags.writeable else img
        img[bad] = img[~bad].min()
    return img, n_bad


def rgb_to_numpy(msg: Image, backend: str = BACKENDS[0]) -> tuple[np.ndarray, str]:
    """RGB camera message -> (array, encoding for the engine: bgr8/rgb8/mono8/bgra8/rgba8; alpha is ignored)."""
    return image_to_numpy(msg, backend), msg.encoding


def numpy_to_image(arr: np.ndarray, encoding: str, header: Header) -> Image:
    """Wrap a C-contiguous array as an Image with ``header`` (shared, not copied: it is never mutated)."""
    arr = np.ascontiguousarray(arr)
    data = array.array("B")
    # one memcpy, through a uint8 view (frombytes refuses a uint16 buffer); assigning bytes would make rclpy
    # type-check every byte
    data.frombytes(arr.view(np.uint8).data)
    height, width = arr.shape[:2]
    return Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=sys.byteorder == "big",
                 step=arr.strides[0], data=data)


def objects_message_type() -> type:
    """vision_msgs/Detection2DArray where vision_msgs is installed, else std_msgs/String (JSON)."""
    from std_msgs.msg import String

    return Detection2DArray if Detection2DArray is not None else String


def objects_to_msg(objects: list, header: Header) -> object:
    """mafs_core.objects.MaskObject list -> the objects_message_type() message. The JSON form is
    {"header": {...}, "objects": [{class_id, class_name, x, y, width, height, area, score}, ...]}."""
    if Detection2DArray is None:
        import json

        from std_msgs.msg import String

        stamp = {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec, "frame_id": header.frame_id}
        return String(data=json.dumps({"header": stamp, "objects": [o.to_dict() for o in objects]}))
    out = Detection2DArray(header=header)
    for o in objects:
        det = Detection2D(header=header, id=str(len(out.detections)))
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = o.class_name, float(o.score)
        det.results.append(hyp)
        det.bbox = BoundingBox2D(size_x=float(o.width), size_y=float(o.height))
        det.bbox.center.position.x, det.bbox.center.position.y = o.x + o.width / 2.0, o.y + o.height / 2.0
        out.detections.append(det)
    return out
