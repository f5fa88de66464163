"""Fusion and segmentation metrics.

Fusion metrics follow the evaluation code that IR-VIS fusion papers share (the MATLAB scripts
used by SeAFusion/PSFusion and the Python ``Evaluator`` of CDDFuse), so that numbers written here
can be put beside published tables. Deviations from that code are deliberate and listed in
docs/metrics.md (MI in bits, SSIM with the standard 11x11 Gaussian window).

All fusion metrics take uint8 grey HxW images (the visible image as its luminance Y, see ``to_gray``)
and work on float64 copies. Filtering uses OpenCV (fast, float64) rather than scipy's convolve2d;
borders are chosen to reproduce the reference ('valid' for VIF, zero padding for Qabf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

FUSION_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")
# All of them are "higher is better".


def to_gray(img: np.ndarray) -> np.ndarray:
    """uint8 grey for the metrics: BGR colour -> BT.601 luminance (cv2 BGR2GRAY, as the reference reads VIS)."""
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[..., 0]
        else:
            img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        raise ValueError(f"metrics need uint8 images, got {img.dtype} (normalise thermal counts first)")
    return img


def _check(*imgs: np.ndarray) -> None:
    for im in imgs:
        if not isinstance(im, np.ndarray) or im.ndim != 2 or im.dtype != np.uint8:
            raise ValueError(f"expected uint8 HxW arrays, got {getattr(im, 'dtype', type(im))} "
                             f"{getattr(im, 'shape', '')}")
    if len({im.shape for im in imgs}) != 1:
        raise ValueError(f"shape mismatch: {[im.shape for im in imgs]}")


# ---------------------------------------------------------------------------- single-image metrics

def entropy(img: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-bin grey histogram."""
    p = np.bincount(img.ravel(), minlength=256) / img.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def std_dev(img: np.ndarray) -> float:
    """SD: population standard deviation of grey levels (contrast)."""
    return float(img.astype(np.float64).std())


def spatial_frequency(img: np.ndarray) -> float:
    """SF = sqrt(RF^2 + CF^2), RF/CF = RMS of horizontal/vertical first differences."""
    f = img.astype(np.float64)
    rf2 = np.mean((f[:, 1:] - f[:, :-1]) ** 2)
    cf2 = np.mean((f[1:, :] - f[:-1, :]) ** 2)
    return float(np.sqrt(rf2 + cf2))


def average_gradient(img: np.ndarray) -> float:
    """AG = mean sqrt((Gx^2 + Gy^2) / 2), central differences inside, one-sided at the border (np.gradient)."""
    gy, gx = np.gradient(img.astype(np.float64))
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2)))


# ---------------------------------------------------------------------------- reference-based metrics

def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """MI(a, b) in bits from the 256x256 joint histogram (MI(x, x) = EN(x))."""
    joint = np.bincount(a.ravel().astype(np.int64) * 256 + b.ravel(), minlength=65536).reshape(256, 256)
    p = joint / a.size
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (pa @ pb)[nz])).sum())


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (the reference would return nan)."""
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def scd(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """SCD = corr(F - B, A) + corr(F - A, B): how much of each source's complement the fused image carries."""
    a, b, f = (im.astype(np.float64) for im in (ir, vis, fused))
    return _corr(f - b, a) + _corr(f - a, b)


def _gauss_window(n: int) -> np.ndarray:
    """MATLAB fspecial('gaussian', n, n/5) as in the VIFp reference, as its 1-D factor: the 2-D window is the
    outer product (the reference zeroes entries below eps * max, none of which exist for n <= 17)."""
    sd = n / 5.0
    r = (n - 1) / 2.0
    h = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sd * sd))
    return h / h.sum()


def _filter_valid(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    """convolve2d(img, outer(win, win), 'valid') for a symmetric 1-D window, as two OpenCV 1-D passes
    (separable: VIF of a 640x480 pair 44 -> 25 ms against the dense 2-D filter; VIF is the slowest metric)."""
    r = win.shape[0] // 2
    if min(img.shape[:2]) < win.shape[0]:
        return np.zeros((0, 0))
    out = cv2.sepFilter2D(img, cv2.CV_64F, win, win, borderType=cv2.BORDER_CONSTANT)
    return out[r:img.shape[0] - r, r:img.shape[1] - r]


def vif(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain multi-scale VIF (VIFp, Sheikh & Bovik 2006), 4 scales, sigma_n^2 = 2, as the reference.

    Scales too small for their window are skipped (the reference would raise on tiny images).
    """
    sigma_nsq, eps = 2.0, 1e-10
    ref, dist = ref.astype(np.float64), dist.astype(np.float64)
    num = den = 0.0
    for scale in range(1, 5):
        win = _gauss_window(2 ** (4 - scale + 1) + 1)
        if scale > 1:
            ref = _filter_valid(ref, win)[::2, ::2]
            dist = _filter_valid(dist, win)[::2, ::2]
        mu1, mu2 = _filter_valid(ref, win), _filter_valid(dist, win)
        if mu1.size == 0:
            break
        s1 = _filter_valid(ref * ref, win) - mu1 * mu1
        s2 = _filter_valid(dist * dist, win) - mu2 * mu2
        s12 = _filter_valid(ref * dist, win) - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        low1 = s1 < eps
        g[low1] = 0
        sv[low1] = s2[low1]
        s1[low1] = 0
        low2 = s2 < eps
        g[low2] = 0
        sv[low2] = 0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0
        sv[sv <= eps] = eps
        num += float(np.log10(1 + g * g * s1 / (sv + sigma_nsq)).sum())
        den += float(np.log10(1 + s1 / sigma_nsq).sum())
    if den == 0:  # a flat reference: the reference code's nan -> 1.0
        return 1.0
    return num / den


_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)


def _edge_strength_orientation(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel magnitude and arctan(sy/sx) (pi/2 where sx == 0), zero padded like convolve2d(..., 'same').

    OpenCV correlates instead of convolving; both Sobel responses only change sign, which leaves
    the magnitude and the sy/sx ratio unchanged.
    """
    f = img.astype(np.float64)
    sx = cv2.filter2D(f, cv2.CV_64F, _SOBEL_X, borderType=cv2.BORDER_CONSTANT)
    sy = cv2.filter2D(f, cv2.CV_64F, _SOBEL_Y, borderType=cv2.BORDER_CONSTANT)
    g = np.sqrt(sx * sx + sy * sy)
    zero = sx == 0
    a = np.where(zero, math.pi / 2, np.arctan(sy / np.where(zero, 1.0, sx)))
    return g, a


# Sigmoid constants of Xydeas & Petrovic (strength: Gamma, kappa, sigma; orientation: the same), shared with
# the differentiable losses.qabf_loss.
QABF_SIGMOID = (0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8)


def _qaf(ga: np.ndarray, aa: np.ndarray, gf: np.ndarray, af: np.ndarray) -> np.ndarray:
    tg, kg, dg, ta, ka, da = QABF_SIGMOID
    # Relative strength, as in the reference including its quirk that equal strengths give gF (not 1);
    # Sobel magnitudes of integer images are 0 or >= 1, so the sigmoid saturates either way.
    with np.errstate(divide="ignore", invalid="ignore"):
        gaf = np.where(ga > gf, gf / ga, np.where(ga == gf, gf, ga / gf))
    aaf = 1 - np.abs(aa - af) / (math.pi / 2)
    qg = tg / (1 + np.exp(kg * (gaf - dg)))
    qa = ta / (1 + np.exp(ka * (aaf - da)))
    return qg * qa


def qabf(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray) -> float:
    """Xydeas-Petrovic Q^{AB/F}: source-edge-strength-weighted edge preservation (L = 1). Max ~0.975."""
    ga, aa = _edge_strength_orientation(ir)
    gb, ab = _edge_strength_orientation(vis)
    gf, af = _edge_strength_orientation(fused)
    den = float((ga + gb).sum())
    if den == 0:
        return 0.0
    return float((_qaf(ga, aa, gf, af) * ga + _qaf(gb, ab, gf, af) * gb).sum() / den)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, 'valid' window positions.

    Same numbers as kornia.metrics.ssim(window_size=11, max_val=255, padding="valid") (a test checks it),
    but written with OpenCV's separable float64 filter: kornia's dense 11x11 conv2d took ~1 s per
    640x480 pair on our 2-core CPU, which made evaluating 247 pairs x 3 methods take a quarter of an hour.
    """
    k = cv2.getGaussianKernel(11, 1.5, cv2.CV_64F)
    x, y = a.astype(np.float64), b.astype(np.float64)

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(z, cv2.CV_64F, k, k, borderType=cv2.BORDER_CONSTANT)[5:-5, 5:-5]

    if min(a.shape) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {a.shape}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


# ---------------------------------------------------------------------------- entry point

def fusion_metrics(ir: np.ndarray, vis: np.ndarray, fused: np.ndarray,
                   names: Sequence[str] = FUSION_METRICS) -> dict[str, float]:
    """All fusion metrics of one triplet (uint8 grey HxW each; pass colour through ``to_gray`` first)."""
    _check(ir, vis, fused)
    unknown = set(names) - set(FUSION_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {FUSION_METRICS}")
    fns = {
        "EN": lambda: entropy(fused),
        "SD": lambda: std_dev(fused),
        "SF": lambda: spatial_frequency(fused),
        "AG": lambda: average_gradient(fused),
        "MI": lambda: mutual_information(ir, fused) + mutual_information(vis, fused),
        "SCD": lambda: scd(ir, vis, fused),
        "VIF": lambda: vif(ir, fused) + vif(vis, fused),
        "Qabf": lambda: qabf(ir, vis, fused),
        "SSIM": lambda: ssim(ir, fused) + ssim(vis, fused),
    }
    return {k: fns[k]() for k in names}


def baseline_fusions(ir: np.ndarray, vis: np.ndarray) -> dict[str, np.ndarray]:
    """Trivial pixel fusions that any learned method must beat: element-wise max and mean (uint8 grey)."""
    mean = ((ir.astype(np.uint16) + vis.astype(np.uint16) + 1) // 2).astype(np.uint8)
    return {"max": np.maximum(ir, vis), "mean": mean}


# ---------------------------------------------------------------------------- segmentation

class ConfusionMatrix:
    """Accumulates a num_classes x num_classes matrix (rows = ground truth, columns = prediction)."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), np.int64)
        self.invalid_predictions = 0  # labelled pixels whose predicted id is out of range (counted, skipped)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and label {gt.shape} differ in shape")
        gt = gt.ravel().astype(np.int64)
        pred = pred.ravel().astype(np.int64)
        keep = (gt >= 0) & (gt < self.num_classes)
        if self.ignore_index is not None:
            keep &= gt != self.ignore_index
        # Predictions outside the class range count as wrong; they are folded into no column.
        bad = (pred < 0) | (pred >= self.num_classes)
        if bad.any():
            self.invalid_predictions += int((bad & keep).sum())
            keep &= ~bad
        n = self.num_classes
        self.mat += np.bincount(gt[keep] * n + pred[keep], minlength=n * n).reshape(n, n)

    def reset(self) -> None:
        self.mat[:] = 0
        self.invalid_predictions = 0

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); nan for classes absent from both prediction and label."""
        tp = np.diag(self.mat).astype(np.float64)
        union = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.mat.sum()
        return float(np.trace(self.mat) / total) if total else float("nan")

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        iou = self.iou()
        return {
            "miou": _none_if_nan(self.miou()),
            "pixel_accuracy": _none_if_nan(self.pixel_accuracy()),
            "iou": {n: _none_if_nan(v) for n, v in zip(names, iou)},
            "gt_pixels": {n: int(v) for n, v in zip(names, self.mat.sum(1))},
            "pred_pixels": {n: int(v) for n, v in zip(names, self.mat.sum(0))},
            "confusion_matrix": self.mat.tolist(),
            "class_names": names,
        }


def _none_if_nan(v: float) -> float | None:
    """JSON has no nan: absent classes become null."""
    return None if v is None or not np.isfinite(v) else float(v)


def binary_masks(pred: np.ndarray, label: np.ndarray, class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One-class evaluation (e.g. msrs_person_masks: 0/255 person masks where cars are not marked):
    prediction -> (pred == class_id), label -> (label != 0); both as 0/1 for a 2-class ConfusionMatrix."""
    return (np.asarray(pred) == class_id).astype(np.uint8), (np.asarray(label) != 0).astype(np.uint8)
