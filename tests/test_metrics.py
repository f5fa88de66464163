"""Fusion and segmentation metrics on hand-computable cases (small generated images)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from mafs_core import metrics as M

H, W = 64, 96


def _rng_img(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """A smooth-ish textured image: blurred noise plus a gradient (VIF/SSIM need structure, not flat)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)), (0, 0), 1.5)
    ramp = np.linspace(0, 80, w)[None, :]
    return np.clip(noise * 0.7 + ramp, 0, 255).astype(np.uint8)


def _blur(img: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma)


# ---------------------------------------------------------------------------- single-image metrics

def test_constant_image_has_zero_information():
    c = np.full((H, W), 77, np.uint8)
    assert M.entropy(c) == 0.0
    assert M.std_dev(c) == 0.0
    assert M.spatial_frequency(c) == 0.0
    assert M.average_gradient(c) == 0.0


def test_entropy_two_levels_is_one_bit_and_uniform_is_eight():
    img = np.zeros((H, W), np.uint8)
    img[:, W // 2:] = 200
    assert M.entropy(img) == pytest.approx(1.0)
    quarter = np.repeat(np.arange(4, dtype=np.uint8) * 60, H * W // 4).reshape(H, W)
    assert M.entropy(quarter) == pytest.approx(2.0)
    uniform = np.arange(256, dtype=np.uint8).repeat(4).reshape(32, 32)
    assert M.entropy(uniform) == pytest.approx(8.0)


def test_sd_of_known_array():
    img = np.array([[0, 2], [4, 6]], np.uint8)  # mean 3, deviations 9,1,1,9 -> var 5
    assert M.std_dev(img) == pytest.approx(math.sqrt(5.0))


def test_sf_and_ag_by_hand():
    # Horizontal ramp with step 3: every row difference is 3, no column difference.
    ramp = np.tile((np.arange(60) * 3).astype(np.uint8), (H, 1))
    assert (np.diff(ramp.astype(int), axis=1) == 3).all()
    assert M.spatial_frequency(ramp) == pytest.approx(3.0)  # sqrt(3^2 + 0)
    assert M.average_gradient(ramp) == pytest.approx(3.0 / math.sqrt(2))  # sqrt((9 + 0) / 2)
    # Vertical step of height 100 between rows 3 and 4 of an 8x5 image.
    step = np.zeros((8, 5), np.uint8)
    step[4:] = 100
    # SF: 5 non-zero vertical differences of 100 out of 7*5, none horizontal.
    assert M.spatial_frequency(step) == pytest.approx(math.sqrt(5 * 100**2 / 35))
    # AG: central differences give 50 at rows 3 and 4 (10 pixels of 40): mean of 50/sqrt(2).
    assert M.average_gradient(step) == pytest.approx(10 * 50 / math.sqrt(2) / 40)


# ---------------------------------------------------------------------------- reference-based metrics

def test_mi_of_image_with_itself_is_its_entropy():
    a = _rng_img(1)
    assert M.mutual_information(a, a) == pytest.approx(M.entropy(a))
    m = M.fusion_metrics(a, a, a)
    assert m["MI"] == pytest.approx(2 * M.entropy(a))
    assert m["EN"] == pytest.approx(M.entropy(a))


def test_mi_of_independent_images_is_small():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 4, (256, 256)).astype(np.uint8) for _ in range(2))
    assert M.mutual_information(a, b) < 0.01
    assert M.mutual_information(a, a) == pytest.approx(2.0, abs=0.01)  # 4 equiprobable levels


def test_scd_by_hand():
    a = (_rng_img(2) // 2).astype(np.uint8)
    b = (_rng_img(3) // 2).astype(np.uint8)
    fused = (a.astype(np.uint16) + b).astype(np.uint8)  # F - B = A, F - A = B: both correlations are 1
    assert M.scd(a, b, fused) == pytest.approx(2.0)
    # Identical sources fused to themselves: the difference images are zero (no complementary info): 0.
    assert M.scd(a, a, a) == 0.0
    # F = A exactly: corr(A - B, A) + 0.
    d = a.astype(float) - b
    expect = np.corrcoef(d.ravel(), a.ravel().astype(float))[0, 1]
    assert M.scd(a, b, a) == pytest.approx(expect)


def test_ssim_of_identical_images_is_one_per_source():
    a, b = _rng_img(4), _rng_img(5)
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert M.fusion_metrics(a, a, a)["SSIM"] == pytest.approx(2.0, abs=1e-5)
    assert M.ssim(a, b) < 0.9


def test_ssim_equals_kornia():
    """Our OpenCV SSIM must give kornia.metrics.ssim's numbers (11x11 Gaussian, valid windows)."""
    import torch
    from kornia.metrics import ssim as kornia_ssim

    a, b = _rng_img(12), _blur(_rng_img(13), 1.0)
    ref = kornia_ssim(torch.from_numpy(a).float()[None, None], torch.from_numpy(b).float()[None, None],
                      window_size=11, max_val=255.0, padding="valid").mean().item()
    assert M.ssim(a, b) == pytest.approx(ref, abs=1e-5)


def test_vif_of_identical_images_is_one_and_drops_with_blur():
    a = _rng_img(6)
    assert M.vif(a, a) == pytest.approx(1.0, abs=1e-6)
    assert M.vif(a, _blur(a)) < 0.8
    assert M.fusion_metrics(a, a, a)["VIF"] == pytest.approx(2.0, abs=1e-6)


def test_vif_flat_reference_follows_reference_convention():
    flat = np.full((H, W), 50, np.uint8)
    assert M.vif(flat, _rng_img(7)) == 1.0


def test_qabf_single_source_near_one_and_ordering():
    a = _rng_img(8)
    q = M.qabf(a, a, a)
    # The sigmoid constants cap Q at Tg/(1+e^(kg(1-Dg))) * Ta/(1+e^(ka(1-Da))) ~ 0.9748.
    cap = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert q == pytest.approx(cap, abs=1e-3)
    assert q > 0.95
    assert M.qabf(a, a, _blur(a)) < q - 0.2
    # A flat fused image keeps no inner edge; only the frame that zero padding (as in the reference's
    # conv2 'same') draws around every image still matches, which is ~5% of a 64x96 image's pixels.
    assert M.qabf(a, a, np.full_like(a, 100)) < 0.3
    assert M.qabf(np.pad(a, 100), np.pad(a, 100), np.full((H + 200, W + 200), 100, np.uint8)) < 0.05


def test_blurred_fusion_scores_lower_on_sharpness_metrics():
    ir, vis = _rng_img(9), _rng_img(10)
    sharp = M.baseline_fusions(ir, vis)["max"]
    blurred = _blur(sharp, 1.5)
    ms, mb = M.fusion_metrics(ir, vis, sharp), M.fusion_metrics(ir, vis, blurred)
    for k in ("AG", "SF", "Qabf", "VIF", "SSIM"):
        assert mb[k] < ms[k], k


def test_baseline_fusions():
    ir = np.array([[0, 255, 10]], np.uint8)
    vis = np.array([[255, 0, 11]], np.uint8)
    b = M.baseline_fusions(ir, vis)
    assert b["max"].tolist() == [[255, 255, 11]]
    assert b["mean"].tolist() == [[128, 128, 11]]  # rounded half up, no uint8 overflow


def test_fusion_metrics_keys_and_input_checks():
    a = _rng_img(11)
    m = M.fusion_metrics(a, a, a)
    assert tuple(m) == M.FUSION_METRICS
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    assert list(M.fusion_metrics(a, a, a, ["EN", "Qabf"])) == ["EN", "Qabf"]
    with pytest.raises(ValueError, match="shape"):
        M.fusion_metrics(a, a, a[:-1])
    with pytest.raises(ValueError, match="uint8"):
        M.fusion_metrics(a.astype(np.float32), a, a)
    with pytest.raises(ValueError, match="unknown"):
        M.fusion_metrics(a, a, a, ["PSNR"])


def test_to_gray_is_bt601_luminance():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 2] = 255  # pure red
    assert M.to_gray(bgr)[0, 0] == round(0.299 * 255)
    with pytest.raises(ValueError, match="uint8"):
        M.to_gray(np.zeros((2, 2), np.uint16))


# ---------------------------------------------------------------------------- segmentation

def test_confusion_matrix_iou_miou_accuracy_with_ignore():
    gt = np.array([[0, 0, 1, 1],
                   [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 0, 2, 1]])
    cm = M.ConfusionMatrix(4, ignore_index=255)
    cm.update(pred, gt)
    # counted pixels: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
    assert cm.mat.sum() == 6
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 3)  # TP 1, FP 1 (gt2->0), FN 1 (gt0->1)
    assert iou[1] == pytest.approx(2 / 3)  # TP 2, FP 1
    assert iou[2] == pytest.approx(1 / 2)  # TP 1, FN 1
    assert math.isnan(iou[3])  # absent in both
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    cm.update(pred, gt)  # accumulates
    assert cm.mat.sum() == 12 and cm.pixel_accuracy() == pytest.approx(4 / 6)
    d = cm.to_dict(["a", "b", "c", "d"])
    assert d["iou"]["d"] is None and d["iou"]["b"] == pytest.approx(2 / 3)
    assert d["gt_pixels"] == {"a": 4, "b": 4, "c": 4, "d": 0}
    with pytest.raises(ValueError):
        cm.to_dict(["a"])


def test_confusion_matrix_rejects_bad_shapes_and_counts_bad_ids():
    cm = M.ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    cm.update(np.array([0, 7, 1]), np.array([0, 1, 200]))  # pred 7 invalid; gt 200 out of range -> skipped
    assert cm.mat.sum() == 1 and cm.invalid_predictions == 1
    empty = M.ConfusionMatrix(2)
    assert math.isnan(empty.miou()) and math.isnan(empty.pixel_accuracy())


def test_binary_person_mode():
    label = np.array([[0, 255, 255, 0]], np.uint8)
    pred = np.array([[2, 2, 1, 0]], np.uint8)  # person id 2
    p, g = M.binary_masks(pred, label, class_id=2)
    assert p.tolist() == [[1, 1, 0, 0]] and g.tolist() == [[0, 1, 1, 0]]
    cm = M.ConfusionMatrix(2, ignore_index=None)
    cm.update(p, g)
    assert cm.iou()[1] == pytest.approx(1 / 3)  # person: TP 1, FP 1, FN 1
    assert cm.iou()[0] == pytest.approx(1 / 3)
