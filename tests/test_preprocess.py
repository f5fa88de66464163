"""Thermal normalisation, visible colour order and thermal->RGB registration, with hand-checkable values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mafs_core.preprocess import ThermalNormalizer, as_homography, register_thermal, to_tensor, visible_to_rgb


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 1), (np.uint16, 100)])
def test_minmax_8_and_16_bit(dtype, scale):
    img = (np.array([[10, 20], [30, 110]]) * scale).astype(dtype)
    out = ThermalNormalizer("minmax")(img)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.1], [0.2, 1.0]], atol=1e-6)


def test_minmax_constant_frame_is_finite():
    out = ThermalNormalizer("minmax")(np.full((4, 5), 77, np.uint8))
    assert np.isfinite(out).all() and out.max() == 0.0


def test_minmax_float_input():
    out = ThermalNormalizer("minmax")(np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32))
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 1), (np.uint16, 500)])
def test_percentile_8_and_16_bit(dtype, scale):
    # values 0..100: the 10th/90th percentiles are exactly 10 and 90 (linear interpolation)
    img = (np.arange(101).reshape(1, 101) * scale).astype(dtype)
    out = ThermalNormalizer("percentile", low_pct=10, high_pct=90, smoothing=0.0)(img)[0]
    assert out[0] == 0.0 and out[10] == pytest.approx(0.0, abs=1e-6)
    assert out[50] == pytest.approx(0.5, abs=1e-6)
    assert out[90] == pytest.approx(1.0, abs=1e-6) and out[100] == 1.0


def test_percentile_ignores_small_hot_spot():
    img = np.full((100, 100), 1000, np.uint16)
    img[:50] = 2000
    img[0, :5] = 60000  # 0.05 % of pixels: a hot exhaust must not crush the scene's contrast
    out = ThermalNormalizer("percentile", low_pct=1, high_pct=99, smoothing=0.0)(img)
    assert out[60, 0] == 0.0 and out[40, 0] == 1.0


def _flicker_frames(n: int = 40) -> list[np.ndarray]:
    """Static background ramp; a large hot object (10 % of the frame) appears in every other frame."""
    base = np.tile(np.linspace(1000, 2000, 128), (96, 1)).astype(np.uint16)
    frames = []
    for i in range(n):
        f = base.copy()
        if i % 2:
            f[:20, :64] = 5000
        frames.append(f)
    return frames


def _background_level_std(norm: ThermalNormalizer) -> float:
    levels = [float(norm(f)[60:, :].mean()) for f in _flicker_frames()]
    return float(np.std(levels[10:]))  # after the EMA has settled


def test_percentile_smoothing_reduces_flicker():
    raw = _background_level_std(ThermalNormalizer("percentile", low_pct=1, high_pct=99, smoothing=0.0))
    smooth = _background_level_std(ThermalNormalizer("percentile", low_pct=1, high_pct=99, smoothing=0.9))
    assert raw > 0.05, "the fixture must flicker without smoothing"
    assert smooth < 0.2 * raw


def test_percentile_batch_equals_frame_by_frame():
    frames = _flicker_frames(5)
    seq = ThermalNormalizer("percentile", smoothing=0.8)
    one_by_one = np.stack([seq(f) for f in frames])
    batched = ThermalNormalizer("percentile", smoothing=0.8)(np.stack(frames))
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)
    # and a single frame given as a batch of one continues the same history
    np.testing.assert_allclose(seq(frames[0][None])[0], ThermalNormalizer("percentile", smoothing=0.8)(
        np.stack([*frames, frames[0]]))[-1], atol=1e-6)


def test_percentile_reset_forgets_history():
    frames = _flicker_frames(4)
    norm = ThermalNormalizer("percentile", smoothing=0.9)
    for f in frames[:3]:
        norm(f)
    assert not np.allclose(norm(frames[3]), ThermalNormalizer("percentile", smoothing=0.9)(frames[3]))
    norm.reset()
    np.testing.assert_array_equal(norm(frames[3]), ThermalNormalizer("percentile", smoothing=0.9)(frames[3]))


def test_fixed_counts_range():
    img = np.array([[500, 1000], [2000, 4000]], np.uint16)
    out = ThermalNormalizer("fixed", low=1000, high=3000)(img)
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 1.0]], atol=1e-6)


@pytest.mark.parametrize("dtype,full", [(np.uint8, 255), (np.uint16, 65535)])
def test_fixed_default_is_dtype_range(dtype, full):
    img = np.array([[0, full // 3], [full // 2, full]], dtype)
    out = ThermalNormalizer("fixed")(img)
    np.testing.assert_allclose(out, img.astype(np.float32) / full, atol=1e-6)


def test_fixed_kelvin_via_gain_offset():
    # radiometric camera: kelvin = counts * 0.01; 30000 counts = 300 K; [273, 373] K -> [0, 1]
    img = np.array([[27300, 30000], [37300, 40000]], np.uint16)
    out = ThermalNormalizer("fixed", low=273.0, high=373.0, gain=0.01, offset=0.0)(img)
    np.testing.assert_allclose(out, [[0.0, 0.27], [1.0, 1.0]], atol=1e-5)
    # 8-bit with an offset: kelvin = counts * 0.5 + 250
    out8 = ThermalNormalizer("fixed", low=250.0, high=350.0, gain=0.5, offset=250.0)(np.array([[0, 100]], np.uint8))
    np.testing.assert_allclose(out8, [[0.0, 0.5]], atol=1e-6)


def test_signed_16_bit_is_read_as_counts():
    img = np.array([[1000, 3000]], np.uint16)
    np.testing.assert_array_equal(ThermalNormalizer("minmax")(img.view(np.int16)), [[0.0, 1.0]])


@pytest.mark.parametrize("kwargs", [{"mode": "gamma"}, {"mode": "percentile", "low_pct": 99, "high_pct": 1},
                                    {"mode": "percentile", "smoothing": 1.0}, {"mode": "fixed", "low": 5, "high": 5}])
def test_bad_normaliser_settings(kwargs):
    with pytest.raises(ValueError):
        ThermalNormalizer(**kwargs)


def test_bad_thermal_shape_and_dtype():
    with pytest.raises(ValueError):
        ThermalNormalizer()(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(TypeError):
        to_tensor(np.zeros((3, 3), np.int64))


def test_visible_encodings():
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30  # B, G, R
    want = torch.tensor([30, 20, 10]) / 255.0
    for img, enc in ((bgr, "bgr8"), (bgr[..., ::-1].copy(), "rgb8"),
                     (np.concatenate([bgr, np.full((2, 3, 1), 255, np.uint8)], -1), "bgra8")):
        out = visible_to_rgb(torch.from_numpy(img), enc)
        assert out.shape == (1, 3, 2, 3) and out.dtype == torch.float32
        torch.testing.assert_close(out[0, :, 1, 2], want)
    mono = visible_to_rgb(torch.full((2, 3), 51, dtype=torch.uint8), "mono8")
    assert mono.shape == (1, 3, 2, 3)
    torch.testing.assert_close(mono, torch.full((1, 3, 2, 3), 0.2))
    with pytest.raises(ValueError):
        visible_to_rgb(torch.from_numpy(bgr), "yuv422")


def _square(h: int, w: int, x0: int, y0: int, size: int) -> torch.Tensor:
    img = torch.zeros(1, 1, h, w)
    img[..., y0:y0 + size, x0:x0 + size] = 1.0
    return img


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    wgt = img[0, 0].double()
    ys, xs = torch.meshgrid(torch.arange(wgt.shape[0]), torch.arange(wgt.shape[1]), indexing="ij")
    return float((xs * wgt).sum() / wgt.sum()), float((ys * wgt).sum() / wgt.sum())


def test_homography_translation_moves_square():
    ir = _square(64, 96, x0=30, y0=30, size=10)  # centroid (34.5, 34.5)
    h = np.array([[1, 0, 20], [0, 1, -10], [0, 0, 1]], np.float64)  # +20 px x, -10 px y
    out = register_thermal(ir, (64, 96), torch.as_tensor(as_homography(h)))
    cx, cy = _centroid(out)
    assert cx == pytest.approx(54.5, abs=0.1) and cy == pytest.approx(24.5, abs=0.1)


def test_homography_scale_to_larger_rgb_grid():
    # thermal 48x64, RGB 96x128: a x2 scale about the origin maps the square's centroid to about twice
    ir = _square(48, 64, x0=20, y0=10, size=8)  # centroid (23.5, 13.5)
    h = np.diag([2.0, 2.0, 1.0])
    out = register_thermal(ir, (96, 128), torch.as_tensor(h))
    assert out.shape == (1, 1, 96, 128)
    cx, cy = _centroid(out)
    assert cx == pytest.approx(47.0, abs=0.6) and cy == pytest.approx(27.0, abs=0.6)
    assert float(out.sum()) == pytest.approx(float(ir.sum()) * 4, rel=0.1)  # area scales by 4


def test_no_homography_resizes_to_rgb_size():
    ir = _square(48, 64, x0=16, y0=12, size=16)
    out = register_thermal(ir, (96, 128))
    assert out.shape == (1, 1, 96, 128)
    cx, cy = _centroid(out)
    assert cx == pytest.approx(47.5, abs=0.6) and cy == pytest.approx(39.5, abs=0.6)
    assert register_thermal(ir, (48, 64)) is ir  # same size: untouched


def test_bad_homography():
    with pytest.raises(ValueError):
        as_homography([1, 2, 3])
    with pytest.raises(ValueError):
        as_homography(np.zeros((3, 3)))
