"""`mafs register`: the thermal->RGB homography of a camera rig, estimated from a few recorded frame pairs.

Thermal and visible images share edges (object outlines, horizon, poles) but not intensities, so both are
turned into normalised gradient-magnitude maps (Sobel magnitude of a blurred image). A coarse exhaustive
search over rotation, scale and shift (cv2.matchTemplate) finds the basin, then OpenCV's ECC
(cv2.findTransformECC) refines it coarse to fine: affine on the coarse level, a homography on the finest.
ECC alone, from the identity, wandered off by tens of pixels on the night pairs of msrs_misaligned.

Conventions (the engine's, `mafs_core.preprocess.register_thermal`): the estimate is first made between the
thermal frame *scaled to the RGB size* and the RGB frame (`h_scaled`), and the parameter the node takes is
`h_engine = h_scaled @ S`, where S is that scaling; `register_thermal` warps the *raw* thermal frame with
its homography (kornia's warp_perspective, the same forward map as cv2.warpPerspective), so h_engine maps
raw thermal pixels to RGB pixels. With equal sizes S is the identity and both matrices are the same.

Several pairs: each pair is registered on its own, then the estimates are combined where they are
comparable, as pixel positions: every estimate maps a grid of RGB-frame points, the estimate closest to
all others (the medoid) decides which pairs agree (inliers), and the coordinate-wise median of the
inliers' grid positions is fitted with one homography. A pair that failed (poor texture, a moving
object, night glare) is thereby outvoted instead of averaged in; too few agreeing pairs is a failure.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mafs_core.preprocess import ThermalNormalizer, as_homography


class RegistrationError(RuntimeError):
    """Registration failed (did not converge, too few or disagreeing pairs); the message says which."""


@dataclass
class RegistrationOptions:
    levels: int = 2  # ECC pyramid levels after the search (which finds the basin; 2: from 320x240 at 640x480)
    iterations: int = 200  # ECC iterations per level at most
    eps: float = 1e-6  # ECC stop: change of the warp parameters
    blur_sigma: float = 1.5  # Gaussian blur before Sobel (px): suppresses sensor noise
    local_window: float = 16.0  # edge_map's local normalisation for ECC (0: plain magnitudes)
    motion: str = "homography"  # or "affine" (rigs with parallel cameras: fewer degrees of freedom)
    coarse_affine: bool = True  # affine on the coarse levels, the full motion only on the finest
    min_correlation: float = 0.17  # a pair whose final ECC correlation is lower has failed (see docs/cameras.md)
    min_pairs: int = 1  # fewest agreeing pairs for a result
    inlier_px: float = 8.0  # an estimate within this mean grid distance (px) of the medoid agrees with it
    search: bool = True  # a coarse exhaustive search over rotation, scale and shift before ECC
    search_degrees: float = 15.0  # rotations searched: +-this, in steps of search_step
    search_step: float = 1.5
    search_scales: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)  # relative to the initial guess
    search_shift: float = 0.2  # largest shift searched, as a fraction of the image size


@dataclass
class PairResult:
    name: str
    ok: bool
    h_scaled: np.ndarray | None = None  # thermal (scaled to RGB size) pixels -> RGB pixels
    correlation: float = float("nan")  # final ECC correlation of the edge maps
    message: str = ""
    inlier: bool = False


@dataclass
class Registration:
    h_scaled: np.ndarray  # thermal scaled to the RGB size -> RGB pixels
    h_engine: np.ndarray  # raw thermal pixels -> RGB pixels: `registration.homography` of the node
    thermal_size: tuple[int, int]  # (H, W) of the raw thermal frames
    rgb_size: tuple[int, int]  # (H, W)
    pairs: list[PairResult] = field(default_factory=list)
    spread_px: float = 0.0  # mean grid distance of the inlier estimates to the result
    ncc_before: float = float("nan")  # gradient-magnitude NCC with the initial guess (median, agreeing pairs)
    ncc_after: float = float("nan")  # ... with the result

    def to_dict(self) -> dict:
        return {"homography": self.h_engine.reshape(-1).tolist(), "h_scaled": self.h_scaled.reshape(-1).tolist(),
                "thermal_size": list(self.thermal_size), "rgb_size": list(self.rgb_size),
                "spread_px": self.spread_px, "ncc_before": self.ncc_before, "ncc_after": self.ncc_after,
                "pairs": [{"name": p.name, "ok": p.ok, "inlier": p.inlier, "correlation": p.correlation,
                           "message": p.message} for p in self.pairs]}


# ---------------------------------------------------------------- images and geometry


def thermal_to_float(ir: np.ndarray) -> np.ndarray:
    """Raw thermal (uint8, uint16 counts, float; grey or colour-mapped) -> HxW float32 in [0, 1].

    Percentile stretch without smoothing: each frame on its own, robust to hot spots; edges only need contrast.
    """
    if ir.ndim == 3:
        ir = cv2.cvtColor(np.ascontiguousarray(ir[..., :3]), cv2.COLOR_BGR2GRAY)
    ir = np.nan_to_num(ir.astype(np.float32)) if ir.dtype.kind == "f" else ir
    return np.asarray(ThermalNormalizer(mode="percentile", smoothing=0.0)(ir), dtype=np.float32)


def visible_to_float(vis: np.ndarray) -> np.ndarray:
    """BGR (or grey) uint8 visible image -> HxW float32 luminance in [0, 1]."""
    if vis.ndim == 3:
        vis = cv2.cvtColor(np.ascontiguousarray(vis[..., :3]), cv2.COLOR_BGR2GRAY)
    return vis.astype(np.float32) / 255.0


def thermal_valid_mask(ir: np.ndarray, band: int = 11) -> np.ndarray:
    """uint8 mask (1 = use) of a raw thermal frame without its zero-filled areas and a band around them.

    Rectified, cropped or re-warped frames have black borders; their straight edges are strong and exist in
    no visible image, so ECC and the search must not see them. Isolated zero pixels (dead pixels) stay in.
    """
    zero = (ir == 0) if ir.ndim == 2 else np.all(ir == 0, axis=-1)
    zero = cv2.morphologyEx(zero.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    bad = cv2.dilate(zero, np.ones((band, band), np.uint8))
    return (1 - bad).astype(np.uint8) if bad.mean() < 0.8 else np.ones_like(bad)


def scale_matrix(src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """Pixel map of a resize from (H, W) src_size to dst_size, pixel centres kept (cv2.resize, F.interpolate)."""
    sy, sx = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    return np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])


def fov_guess(rgb_size: tuple[int, int], thermal_size: tuple[int, int], ir_hfov: float, rgb_hfov: float
              ) -> np.ndarray:
    """Initial h_scaled from the horizontal fields of view (degrees): a scale about the image centre.

    Assumes square pixels in both cameras and parallel, nearby optical axes; a wider thermal lens makes
    its (scaled) frame's content smaller, so it is magnified by tan(ir/2) / tan(rgb/2).
    """
    if not (0 < ir_hfov < 180 and 0 < rgb_hfov < 180):
        raise ValueError(f"fields of view must be in (0, 180) degrees, got {ir_hfov}, {rgb_hfov}")
    (hr, wr), (ht, wt) = rgb_size, thermal_size
    s_x = math.tan(math.radians(ir_hfov) / 2) / math.tan(math.radians(rgb_hfov) / 2)
    s_y = s_x * (wr / wt) / (hr / ht)  # the resize to the RGB size stretches thermal unevenly if aspects differ
    cx, cy = (wr - 1) / 2.0, (hr - 1) / 2.0
    return np.array([[s_x, 0.0, cx * (1 - s_x)], [0.0, s_y, cy * (1 - s_y)], [0.0, 0.0, 1.0]])


def edge_map(img: np.ndarray, blur_sigma: float = 1.5, local_window: float = 16.0) -> np.ndarray:
    """Locally normalised gradient magnitude of a blurred float image, in [0, 1].

    Works across modalities: thermal and visible disagree on intensities and contrast sign, far less on
    where edges are. Dividing by the local mean magnitude (a Gaussian window of `local_window` px per 480
    px of height) lets the faint texture of a dark night frame count as much as street lights and hot
    bodies do; the global-mean term keeps flat noise from being blown up. The 99th percentile maps to 1.
    """
    g = cv2.GaussianBlur(img, (0, 0), blur_sigma) if blur_sigma > 0 else img
    mag = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
    if local_window > 0:
        local = cv2.GaussianBlur(mag, (0, 0), local_window * max(1.0, img.shape[0] / 480.0))
        mag = mag / (local + 0.5 * float(mag.mean()) + 1e-8)
    top = float(np.percentile(mag, 99))
    return np.clip(mag / top, 0.0, 1.0).astype(np.float32) if top > 1e-8 else mag.astype(np.float32)


def grid_points(size: tuple[int, int], nx: int = 9, ny: int = 7, margin: float = 0.05) -> np.ndarray:
    """An ny x nx grid of (x, y) points over the image, as [N, 2] float64."""
    h, w = size
    xs = np.linspace(margin * (w - 1), (1 - margin) * (w - 1), nx)
    ys = np.linspace(margin * (h - 1), (1 - margin) * (h - 1), ny)
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)


def apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(pts.reshape(-1, 1, 2).astype(np.float64), h).reshape(-1, 2)


def grid_error(h_a: np.ndarray, h_b: np.ndarray, size: tuple[int, int]) -> tuple[float, float]:
    """Mean and max displacement (px) between where two homographies send a grid over an image of `size`."""
    pts = grid_points(size)
    d = np.linalg.norm(apply_h(h_a, pts) - apply_h(h_b, pts), axis=1)
    return float(d.mean()), float(d.max())


def warp_to_rgb(img: np.ndarray, h: np.ndarray, rgb_size: tuple[int, int]) -> np.ndarray:
    """Warp an image in the thermal (scaled) frame into the RGB frame; unseen pixels become 0."""
    return cv2.warpPerspective(img, h, (rgb_size[1], rgb_size[0]), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def gradient_ncc(thermal: np.ndarray, vis: np.ndarray, h_scaled: np.ndarray, blur_sigma: float = 1.5,
                 mask: np.ndarray | None = None) -> float:
    """Registration measure: NCC of the gradient magnitudes of the warped thermal and the visible frame.

    Only where the warped thermal frame has data (an out-of-view border would otherwise count as agreement).
    `thermal` is already at the RGB size; both are float images; `mask` marks valid thermal pixels.
    """
    size = vis.shape[:2]
    warped = warp_to_rgb(thermal, h_scaled, size)
    ones = np.ones(thermal.shape[:2], np.float32) if mask is None else mask.astype(np.float32)
    valid = warp_to_rgb(ones, h_scaled, size) > 0.999
    valid = cv2.erode(valid.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0  # the Sobel rim of the border
    if valid.sum() < 100:
        return float("nan")
    a, b = edge_map(warped, blur_sigma)[valid], edge_map(vis, blur_sigma)[valid]
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


# ---------------------------------------------------------------- ECC


def _pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [img]
    for _ in range(levels - 1):
        h, w = out[-1].shape[:2]
        if min(h, w) < 32:
            break
        out.append(cv2.resize(out[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return out


def ecc_pyramid(template: np.ndarray, image: np.ndarray, init: np.ndarray | None = None,
                opts: RegistrationOptions | None = None, edges: bool = True, template_mask: np.ndarray | None = None
                ) -> tuple[np.ndarray, float]:
    """Coarse-to-fine ECC: the homography W with template(x) ~ image(W x), i.e. template pixels -> image pixels.

    Both are float images of the same size; `edges` turns each level into a gradient-magnitude map first
    (cross-modal), otherwise intensities are used (same modality). `template_mask` (uint8, 1 = use) leaves
    out template pixels. Returns (W, final correlation); raises RegistrationError where ECC does not
    converge at some level.
    """
    opts = opts or RegistrationOptions()
    if opts.motion not in ("homography", "affine"):
        raise ValueError(f"motion must be 'homography' or 'affine', got {opts.motion!r}")
    valid = 1.0 if template_mask is None else (template_mask > 0)
    searched = edges and opts.search
    if searched:  # plain magnitudes: the strong, large-scale edges decide the basin
        init, _ = coarse_search(edge_map(template, opts.blur_sigma, 0.0) * valid,
                                edge_map(image, opts.blur_sigma, 0.0), init, opts, template_mask)
    if edges:  # edges at full resolution, then downsampled: coarse levels see blurred real edges, a wide basin
        template = edge_map(template, opts.blur_sigma, opts.local_window) * valid
        image = edge_map(image, opts.blur_sigma, opts.local_window)
    t_pyr, i_pyr = _pyramid(template, opts.levels), _pyramid(image, opts.levels)
    n = min(len(t_pyr), len(i_pyr))
    m_pyr = [None] * n if template_mask is None else [
        cv2.resize(template_mask.astype(np.uint8), (t.shape[1], t.shape[0]), interpolation=cv2.INTER_NEAREST)
        for t in t_pyr[:n]]
    w = np.eye(3) if init is None else np.asarray(init, np.float64) / init[2, 2]
    # Bring the initial warp down to the coarsest level: W_level = D^-1 W D, D = coarse -> fine pixel map.
    downs = [scale_matrix(t_pyr[k + 1].shape[:2], t_pyr[k].shape[:2]) for k in range(n - 1)]
    for d in downs:
        w = np.linalg.inv(d) @ w @ d
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, opts.iterations, opts.eps)
    cc = float("nan")
    for level in range(n - 1, -1, -1):
        t, im = t_pyr[level], i_pyr[level]
        full = opts.motion == "homography" and not (opts.coarse_affine and level > 0)
        # Few degrees of freedom first: without the search, a translation at the coarsest level settles the
        # large shift before the affine terms may move (they would otherwise trade it for shear or scale).
        stages = (["translation"] if level == n - 1 and not searched else []) + ["homography" if full else "affine"]
        for motion in stages:
            try:
                w, cc = _ecc_step(t, im, w, motion, criteria, m_pyr[level])
            except cv2.error as exc:
                raise RegistrationError(f"ECC did not converge at pyramid level {level} ({t.shape[1]}x{t.shape[0]}, "
                                        f"{motion}): {str(exc).strip().splitlines()[-1]}") from exc
        if level > 0:
            d = downs[level - 1]
            w = d @ w @ np.linalg.inv(d)
    return w / w[2, 2], float(cc)


def coarse_search(template: np.ndarray, image: np.ndarray, init: np.ndarray | None = None,
                  opts: RegistrationOptions | None = None, template_mask: np.ndarray | None = None,
                  width: int = 240) -> tuple[np.ndarray, float]:
    """Global initial warp (template px -> image px): the best of rotations x scales x shifts around `init`.

    ECC is a local optimiser; between modalities its basin is a few pixels wide at the coarsest level,
    narrower than a rig's real offset often is. An exhaustive search over a similarity transform on small
    edge maps is cheap and finds the basin: for each rotation/scale the warped template is located in the
    image by masked normalised cross-correlation (cv2.matchTemplate: all shifts at once, only where the
    template has data). Edge maps in.
    """
    opts = opts or RegistrationOptions()
    h, w = image.shape[:2]
    f = min(1.0, width / w)
    small = (max(8, round(h * f)), max(8, round(w * f)))
    down = scale_matrix((h, w), small)  # full -> small pixels
    t_s = cv2.resize(template, (small[1], small[0]), interpolation=cv2.INTER_AREA)
    i_s = cv2.resize(image, (small[1], small[0]), interpolation=cv2.INTER_AREA)
    m_s = np.ones(small, np.float32) if template_mask is None else cv2.resize(
        template_mask.astype(np.float32), (small[1], small[0]), interpolation=cv2.INTER_AREA)
    w0 = down @ (np.eye(3) if init is None else np.asarray(init, np.float64)) @ np.linalg.inv(down)
    my, mx = round(opts.search_shift * small[0]), round(opts.search_shift * small[1])
    i_pad = cv2.copyMakeBorder(i_s, my, my, mx, mx, cv2.BORDER_REFLECT)
    c = ((small[1] - 1) / 2.0, (small[0] - 1) / 2.0)
    best = (-np.inf, w0)
    n_rot = max(0, round(opts.search_degrees / opts.search_step))
    for angle in np.linspace(-n_rot * opts.search_step, n_rot * opts.search_step, 2 * n_rot + 1):
        for scale in opts.search_scales:
            rot = np.vstack([cv2.getRotationMatrix2D(c, float(angle), float(scale)), [0.0, 0.0, 1.0]])
            m = rot @ w0  # template -> image, before the shift
            # The template as the image would see it, slid over the image (mirrored at its borders: every
            # shift up to the margin is scored, and a mirrored border has edges like the rest of the frame).
            dsize = (small[1], small[0])
            warped = cv2.warpPerspective(t_s, m, dsize, flags=cv2.INTER_LINEAR)
            valid = (cv2.warpPerspective(m_s, m, dsize, flags=cv2.INTER_NEAREST) > 0.99).astype(np.float32)
            if valid.mean() < 0.3 or warped[valid > 0].std() < 1e-6:
                continue
            score = np.nan_to_num(cv2.matchTemplate(i_pad, warped, cv2.TM_CCOEFF_NORMED, mask=valid),
                                  nan=-1.0, posinf=-1.0, neginf=-1.0)
            _, top, _, (x, y) = cv2.minMaxLoc(score)
            if top > best[0]:
                shift = np.array([[1.0, 0.0, x - mx], [0.0, 1.0, y - my], [0.0, 0.0, 1.0]])
                best = (top, shift @ m)
    return np.linalg.inv(down) @ best[1] @ down, float(best[0])


def _ecc_step(template: np.ndarray, image: np.ndarray, w: np.ndarray, motion: str, criteria: tuple,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """One cv2.findTransformECC run with a 3x3 warp in and out (2x3 for translation/affine, last row 0 0 1)."""
    if motion == "homography":
        cc, w32 = cv2.findTransformECC(template, image, w.astype(np.float32), cv2.MOTION_HOMOGRAPHY, criteria,
                                       mask, 5)
        return w32.astype(np.float64), float(cc)
    kind = {"translation": cv2.MOTION_TRANSLATION, "affine": cv2.MOTION_AFFINE}[motion]
    cc, w32 = cv2.findTransformECC(template, image, (w / w[2, 2])[:2].astype(np.float32), kind, criteria, mask, 5)
    return np.vstack([w32.astype(np.float64), [0.0, 0.0, 1.0]]), float(cc)


def _plausible(h: np.ndarray, size: tuple[int, int]) -> str:
    """Why a homography cannot be a camera rig's (empty if it can): folded, tiny or huge image of the frame."""
    hh, ww = size
    corners = np.array([[0, 0], [ww - 1, 0], [ww - 1, hh - 1], [0, hh - 1]], np.float64)
    q = apply_h(h, corners)
    if not np.all(np.isfinite(q)):
        return "corners map to infinity"
    e = np.roll(q, -1, axis=0) - q  # edge vectors; the z of consecutive cross products: one sign if convex
    cross = e[:, 0] * np.roll(e, -1, axis=0)[:, 1] - e[:, 1] * np.roll(e, -1, axis=0)[:, 0]
    if not (all(c > 0 for c in cross) or all(c < 0 for c in cross)):
        return "the thermal frame folds over"
    area = abs(cv2.contourArea(q.astype(np.float32))) / float(ww * hh)
    if not 1 / 16 < area < 16:
        return f"the thermal frame would cover {area:.2f}x the RGB frame"
    return ""


# ---------------------------------------------------------------- one or more pairs


def prepare(ir: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw thermal + BGR visible -> (thermal float at the RGB size, its valid mask, visible float luminance).

    The thermal frame is resized to the RGB size as the engine does without a homography: the estimate
    is made in that frame (h_scaled) and converted for the engine afterwards.
    """
    size = (vis.shape[1], vis.shape[0])
    t = cv2.resize(thermal_to_float(ir), size, interpolation=cv2.INTER_LINEAR)
    m = cv2.resize(thermal_valid_mask(ir), size, interpolation=cv2.INTER_NEAREST)
    return t, m, visible_to_float(vis)


def register_pair(ir: np.ndarray, vis: np.ndarray, init: np.ndarray | None = None,
                  opts: RegistrationOptions | None = None, name: str = "") -> PairResult:
    """Register one pair of raw frames (thermal of any size, BGR/grey visible); the result is h_scaled."""
    opts = opts or RegistrationOptions()
    thermal, mask, v = prepare(ir, vis)
    try:
        h, cc = ecc_pyramid(thermal, v, init, opts, edges=True, template_mask=mask)
    except RegistrationError as exc:
        return PairResult(name, False, message=str(exc))
    if cc < opts.min_correlation:
        return PairResult(name, False, h, cc, f"edge correlation {cc:.3f} below {opts.min_correlation}")
    why = _plausible(h, v.shape[:2])
    if why:
        return PairResult(name, False, h, cc, f"implausible result: {why}")
    return PairResult(name, True, h, cc)


def combine(estimates: Sequence[np.ndarray], size: tuple[int, int], inlier_px: float = 8.0
            ) -> tuple[np.ndarray, list[bool], float]:
    """Robust consensus of several homographies: (result, inlier flags, mean grid distance of inliers to it).

    Compared as grid positions in pixels, not matrix entries (whose scales differ by orders of magnitude).
    """
    pts = grid_points(size)
    mapped = np.stack([apply_h(h, pts) for h in estimates])  # [K, N, 2]
    if len(estimates) == 1:
        return np.asarray(estimates[0]) / estimates[0][2, 2], [True], 0.0
    dist = np.linalg.norm(mapped[:, None] - mapped[None], axis=-1).mean(-1)  # [K, K] mean grid distance
    medoid = int(np.argmin(np.median(dist, axis=1)))
    inliers = dist[medoid] <= inlier_px
    target = np.median(mapped[inliers], axis=0)
    h, _ = cv2.findHomography(pts, target, 0)  # least squares on the exact grid: a clean fit
    if h is None:
        h = np.asarray(estimates[medoid])
    h = h / h[2, 2]
    fit = apply_h(h, pts)
    spread = float(np.linalg.norm(mapped[inliers] - fit[None], axis=-1).mean())
    return h, inliers.tolist(), spread


def register_pairs(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], init: np.ndarray | None = None,
                   opts: RegistrationOptions | None = None, fov: tuple[float, float] | None = None) -> Registration:
    """Estimate the rig's homography from (name, raw thermal, BGR visible) pairs; raises RegistrationError.

    `init`: an initial h_scaled guess; `fov`: (ir_hfov, rgb_hfov) degrees for one instead (a centred scale).
    """
    opts = opts or RegistrationOptions()
    frames: list[tuple[str, np.ndarray, np.ndarray]] = []
    th_size = rgb_size = None
    for name, ir, vis in pairs:
        if th_size is None:
            th_size, rgb_size = tuple(ir.shape[:2]), tuple(vis.shape[:2])
        elif tuple(ir.shape[:2]) != th_size or tuple(vis.shape[:2]) != rgb_size:
            raise RegistrationError(f"pair {name}: sizes {ir.shape[:2]}/{vis.shape[:2]} differ from the first "
                                    f"pair's {th_size}/{rgb_size} (one rig per run)")
        frames.append((name, ir, vis))
    if not frames:
        raise RegistrationError("no frame pairs to register")
    if init is None and fov is not None:
        init = fov_guess(rgb_size, th_size, *fov)
    h0 = np.eye(3) if init is None else np.asarray(init, np.float64)
    results = [register_pair(ir, vis, h0, opts, name) for name, ir, vis in frames]
    good = [r for r in results if r.ok]
    if len(good) < max(1, opts.min_pairs):
        details = "; ".join(f"{r.name}: {r.message}" for r in results if not r.ok)
        raise RegistrationError(f"{len(good)} of {len(results)} pair(s) registered, need {opts.min_pairs}"
                                + (f" ({details})" if details else ""))
    h, inl, spread = combine([r.h_scaled for r in good], rgb_size, opts.inlier_px)
    for r, flag in zip(good, inl, strict=True):
        r.inlier = flag
    n_in = sum(inl)
    if n_in < max(opts.min_pairs, math.ceil(len(good) / 2)):
        raise RegistrationError(f"the pairs disagree: only {n_in} of {len(good)} registered pairs agree within "
                                f"{opts.inlier_px} px (record pairs with more structure at several distances)")
    prepared = [prepare(ir, vis) for r, (_, ir, vis) in zip(results, frames, strict=True) if r.inlier]
    ncc0 = [gradient_ncc(t, v, h0, opts.blur_sigma, m) for t, m, v in prepared]
    ncc1 = [gradient_ncc(t, v, h, opts.blur_sigma, m) for t, m, v in prepared]
    s = scale_matrix(th_size, rgb_size)
    h_engine = as_homography(h @ s)
    return Registration(h, h_engine, th_size, rgb_size, results, spread,
                        float(np.nanmedian(ncc0)), float(np.nanmedian(ncc1)))



# ---------------------------------------------------------------- outputs


def overlay(ir: np.ndarray, vis: np.ndarray, h_before: np.ndarray, h_after: np.ndarray,
            blur_sigma: float = 1.5) -> np.ndarray:
    """Before | after image (BGR uint8): RGB edges green, warped thermal edges magenta; aligned edges white."""
    t, m, v = prepare(ir, vis)
    size = v.shape[:2]
    ev = edge_map(v, blur_sigma, 0.0)
    panels = []
    for label, h in (("before", h_before), ("after", h_after)):
        et = warp_to_rgb(edge_map(t, blur_sigma, 0.0) * m, h, size)
        img = (np.dstack([et, ev, et]) * 255).clip(0, 255).astype(np.uint8)
        cv2.putText(img, label, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2, cv2.LINE_AA)
        panels.append(img)
    return np.hstack(panels)


def params_snippet(reg: Registration) -> str:
    """The node's parameter-file fragment (config/mafs.yaml layout) with the estimated homography."""
    vals = ", ".join(f"{x:.9g}" for x in reg.h_engine.reshape(-1))
    th, rgb = reg.thermal_size, reg.rgb_size
    return ("# mafs register: thermal -> RGB homography (raw thermal pixels -> RGB pixels, as the engine warps)\n"
            f"# thermal {th[1]}x{th[0]}, RGB {rgb[1]}x{rgb[0]}; {sum(p.inlier for p in reg.pairs)} of "
            f"{len(reg.pairs)} pair(s) agree, spread {reg.spread_px:.2f} px; gradient NCC "
            f"{reg.ncc_before:.3f} -> {reg.ncc_after:.3f}\n"
            "/**:\n  ros__parameters:\n    registration:\n"
            f"      homography: [{vals}]\n")


# ---------------------------------------------------------------- reading pairs


def folder_pairs(ir_dir: str | Path, vis_dir: str | Path, limit: int | None = None
                 ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, raw thermal, BGR visible) of the pairs in two folders (same file names), evenly spread if limited."""
    from mafs_core.io import list_pairs, read_ir, read_vis

    pairs = list_pairs(ir_dir, vis_dir)
    if limit and len(pairs) > limit:
        pairs = [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, limit).round()]
    return [(p.name, read_ir(p.ir), read_vis(p.vis)) for p in pairs]


def bag_pairs(bag: str | Path, thermal_topic: str, rgb_topic: str, limit: int = 8, slop: float | None = None,
              thermal_offset: float = 0.0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Pairs of a bag as the node pairs them (`mafs bag eval`'s pairer), `limit` of them spread over the bag."""
    from mafs_core.bag import PairingOptions, iter_pairs
    from mafs_core.bagio import BagReader, to_bgr8

    out: list[tuple[str, np.ndarray, np.ndarray]] = []
    with BagReader(bag) as reader:
        reader.check_topics([thermal_topic, rgb_topic])
        total = min(reader.message_counts.get(thermal_topic, 0), reader.message_counts.get(rgb_topic, 0))
        stride = max(1, total // max(1, limit))
        pairs = iter_pairs(reader, thermal_topic, rgb_topic, None, PairingOptions(slop=slop,
                                                                                  thermal_offset=thermal_offset))
        try:
            for pf in pairs:
                if pf.index % stride:
                    continue
                th = pf.thermal.image
                if th.ndim == 3:  # a colour-mapped thermal stream: its luminance (as `mafs bag eval`)
                    th = cv2.cvtColor(to_bgr8(th, pf.thermal.encoding), cv2.COLOR_BGR2GRAY)
                out.append((pf.name or f"{pf.index:06d}_{pf.rgb.stamp_ns}", th, to_bgr8(pf.rgb.image,
                                                                                      pf.rgb.encoding)))
                if len(out) >= limit:
                    break
        finally:
            pairs.close()
    return out


# ---------------------------------------------------------------- command line


def _cmd_register(args: argparse.Namespace) -> int:
    from mafs_core.bagio import BagError
    from mafs_core.io import jsonable

    if bool(args.bag) == bool(args.ir or args.vis) or (not args.bag and not (args.ir and args.vis)):
        print("mafs register: error: give either --ir DIR --vis DIR, or --bag BAG")
        return 2
    if args.pairs < 1 or args.min_pairs < 1:
        print("mafs register: error: --pairs and --min-pairs must be at least 1")
        return 2
    if (args.ir_hfov is None) != (args.rgb_hfov is None):
        print("mafs register: error: --ir-hfov and --rgb-hfov go together")
        return 2
    try:
        if args.bag:
            pairs = bag_pairs(args.bag, args.thermal_topic, args.rgb_topic, args.pairs, args.slop, args.thermal_offset)
        else:
            pairs = folder_pairs(args.ir, args.vis, args.pairs)
    except (BagError, FileNotFoundError, ValueError) as exc:
        print(f"mafs register: error: {exc}")
        return 2
    opts = RegistrationOptions(motion=args.motion, min_pairs=args.min_pairs, min_correlation=args.min_correlation)
    fov = (args.ir_hfov, args.rgb_hfov) if args.ir_hfov is not None else None
    try:
        if len(pairs) < args.min_pairs:
            raise RegistrationError(f"only {len(pairs)} pair(s) found, need at least {args.min_pairs}")
        reg = register_pairs(pairs, opts=opts, fov=fov)
    except (RegistrationError, ValueError) as exc:
        print(f"mafs register: registration failed: {exc}")
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for p in reg.pairs:
        state = "inlier" if p.inlier else ("outlier" if p.ok else f"failed: {p.message}")
        print(f"  {p.name}: ECC correlation {p.correlation:.3f} ({state})")
    best = max((i for i, p in enumerate(reg.pairs) if p.inlier), key=lambda i: reg.pairs[i].correlation)
    h0 = np.eye(3) if fov is None else fov_guess(reg.rgb_size, reg.thermal_size, *fov)
    cv2.imwrite(str(out / "overlay.png"), overlay(pairs[best][1], pairs[best][2], h0, reg.h_scaled))
    (out / "registration.yaml").write_text(params_snippet(reg))
    (out / "registration.json").write_text(json.dumps(jsonable(reg.to_dict()), indent=1))
    print(f"registered {sum(p.inlier for p in reg.pairs)} of {len(reg.pairs)} pair(s): spread {reg.spread_px:.2f} px, "
          f"gradient NCC {reg.ncc_before:.3f} (before) -> {reg.ncc_after:.3f} (after)")
    print("homography (raw thermal px -> RGB px): [" + ", ".join(f"{x:.6g}" for x in reg.h_engine.reshape(-1)) + "]")
    print(f"wrote {out / 'registration.yaml'} (paste into the params file), {out / 'overlay.png'} "
          f"({pairs[best][0]}: RGB edges green, thermal magenta, white where they agree), registration.json")
    return 0


def register(subparsers, registry: dict) -> None:
    from mafs_core.bag import RGB_TOPIC, THERMAL_TOPIC

    p = subparsers.add_parser("register", help="estimate the thermal->RGB homography from recorded pairs",
                              description="Estimate registration.homography from a few thermal/RGB pairs "
                                          "(edge-map ECC after a coarse search; several pairs vote).")
    p.add_argument("--ir", help="folder of thermal images")
    p.add_argument("--vis", help="folder of RGB images (same file names)")
    p.add_argument("--bag", help="rosbag2 (directory, .mcap or .db3) instead of folders")
    p.add_argument("--thermal-topic", default=THERMAL_TOPIC)
    p.add_argument("--rgb-topic", default=RGB_TOPIC)
    p.add_argument("--slop", type=float, default=None, help="max stamp difference of a pair, s (node default)")
    p.add_argument("--thermal-offset", type=float, default=0.0, help="seconds added to thermal stamps before pairing")
    p.add_argument("--pairs", type=int, default=8, help="pairs used, spread over the input (default 8)")
    p.add_argument("--min-pairs", type=int, default=1, help="fewest agreeing pairs for a result (default 1)")
    p.add_argument("--ir-hfov", type=float, help="thermal horizontal field of view, degrees (initial guess)")
    p.add_argument("--rgb-hfov", type=float, help="RGB horizontal field of view, degrees (initial guess)")
    p.add_argument("--motion", choices=("homography", "affine"), default="homography")
    p.add_argument("--min-correlation", type=float, default=RegistrationOptions.min_correlation,
                   help="final ECC correlation below which a pair counts as failed")
    p.add_argument("--out", default="register_out", help="folder for registration.yaml, overlay.png, .json")
    p.set_defaults(func=_cmd_register)
