"""sensor_msgs/Image <-> numpy: encodings, padded rows, byte order, bad input. Every importable backend."""

from __future__ import annotations

import array

import numpy as np
import pytest

conv = pytest.importorskip("mafs_ros.conversions", reason="ROS message packages not installed")
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(b not in conv.BACKENDS, reason=f"{b} not importable here"))
            for b in ("cv_bridge", "numpy")]
H, W = 6, 5


def make_msg(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Build a message by hand (not with the code under test), rows padded by ``pad`` bytes."""
    a = arr.astype(arr.dtype.newbyteorder(">" if bigendian else "<"))
    rows = a.reshape(a.shape[0], -1).view(np.uint8).reshape(a.shape[0], -1)
    padded = np.concatenate([rows, np.full((a.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return Image(height=a.shape[0], width=a.shape[1], encoding=encoding, is_bigendian=bigendian,
                 step=padded.shape[1], data=array.array("B", padded.tobytes()))


CASES = [
    ("mono8", np.uint8, ()), ("8UC1", np.uint8, ()), ("mono16", np.uint16, ()), ("16UC1", np.uint16, ()),
    ("32FC1", np.float32, ()), ("rgb8", np.uint8, (3,)), ("bgr8", np.uint8, (3,)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("encoding", "dtype", "extra"), CASES)
@pytest.mark.parametrize("pad", [0, 1, 3])
def test_decode_honours_step_padding(backend: str, encoding: str, dtype, extra: tuple, pad: int) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.random((H, W, *extra)) * 60000).astype(dtype)
    msg = make_msg(arr, encoding, pad)
    conv.check_image(msg, conv.THERMAL_ENCODINGS)
    out = conv.image_to_numpy(msg, backend)
    assert out.shape == arr.shape and out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("backend", BACKENDS)
def test_big_endian_mono16(backend: str) -> None:
    arr = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1000
    out, n_bad = conv.thermal_to_numpy(make_msg(arr, "16UC1", pad=1, bigendian=True), backend)
    assert n_bad == 0 and out.dtype == np.uint16
    np.testing.assert_array_equal(out, arr)


def test_false_colour_thermal_becomes_grey() -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    grey_rgb, _ = conv.thermal_to_numpy(make_msg(rgb, "rgb8"))
    grey_bgr, _ = conv.thermal_to_numpy(make_msg(rgb[..., ::-1].copy(), "bgr8"))
    assert grey_rgb.shape == (H, W) and grey_rgb.dtype == np.uint8
    np.testing.assert_array_equal(grey_rgb, grey_bgr)
    assert int(grey_rgb[0, 0]) == round(0.299 * 200)


def test_nan_thermal_pixels_are_replaced_and_counted() -> None:
    arr = np.full((H, W), 300.0, np.float32)
    arr[0, 0], arr[1, 1], arr[2, 2] = np.nan, np.inf, 280.0
    out, n_bad = conv.thermal_to_numpy(make_msg(arr, "32FC1", pad=2))
    assert n_bad == 2 and np.isfinite(out).all() and out[0, 0] == 280.0 and out[1, 1] == 280.0
    with pytest.raises(conv.ImageError, match="no finite"):
        conv.thermal_to_numpy(make_msg(np.full((H, W), np.nan, np.float32), "32FC1"))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "encoding 'yuv422' not supported"),
        (lambda m: setattr(m, "encoding", "mono16"), "not supported"),  # allowed for thermal only
        (lambda m: setattr(m, "height", 0), "empty image"),
        (lambda m: setattr(m, "step", 14), "step 14 < width"),
        (lambda m: setattr(m, "data", m.data[:-1]), "data has 89 bytes, height x step = 90"),
        (lambda m: setattr(m, "height", 7), "data has 90 bytes, height x step = 105"),
    ],
)
def test_malformed_messages_raise_image_error(mutate, match: str) -> None:
    msg = make_msg(np.zeros((H, W, 3), np.uint8), "bgr8")
    mutate(msg)
    with pytest.raises(conv.ImageError, match=match):
        conv.check_image(msg, conv.RGB_ENCODINGS)


@pytest.mark.parametrize(("encoding", "shape", "dtype"), [("bgr8", (H, W, 3), np.uint8), ("rgb8", (H, W, 3), np.uint8),
                                                    ("mono8", (H, W), np.uint8), ("mono16", (H, W), np.uint16)])
def test_encode_round_trip_keeps_header(encoding: str, shape: tuple, dtype: type) -> None:
    arr = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = conv.numpy_to_image(arr[:, ::-1], encoding, header)  # non-contiguous input is fine
    row = W * (3 if len(shape) == 3 else 1) * np.dtype(dtype).itemsize
    assert msg.header is header and (msg.height, msg.width, msg.step) == (H, W, row)
    conv.check_image(msg, conv.THERMAL_ENCODINGS if encoding == "mono16" else conv.RGB_ENCODINGS)
    np.testing.assert_array_equal(conv.image_to_numpy(msg, "numpy"), arr[:, ::-1])
