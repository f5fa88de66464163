"""FusionSegmenter on the CPU: shapes and dtypes for every input kind, colour order, overlay, batching, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mafs_core.checkpoint import save_checkpoint
from mafs_core.classes import MSRS_PALETTE
from mafs_core.engine import EngineConfig, FusionResult, FusionSegmenter, resolve_device, resolve_precision
from mafs_core.model import build_model

H, W = 64, 96


@pytest.fixture(scope="module")
def seg() -> FusionSegmenter:
    return FusionSegmenter.from_variant("mafs_t", seed=0, device="cpu", warmup=0)


def _frames(h: int = H, w: int = W, seed: int = 0, th_h: int | None = None, th_w: int | None = None,
            th_dtype=np.uint16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    th_h, th_w = th_h or h, th_w or w
    yy, xx = np.mgrid[0:th_h, 0:th_w]
    base = (np.sin(xx / 7.0) + np.cos(yy / 5.0) + 2) / 4  # smooth structure in [0, 1]
    if th_dtype == np.uint8:
        th = (base * 255).astype(np.uint8)
    elif th_dtype == np.uint16:
        th = (20000 + base * 10000).astype(np.uint16)
    else:
        th = (base * 40 + 280).astype(np.float32)  # e.g. Kelvin already
    bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return th, bgr


def _check(res: FusionResult, h: int, w: int, n: int, color: bool = True, overlay: bool = True) -> None:
    assert res.fused_bgr.shape == (h, w, 3) and res.fused_bgr.dtype == np.uint8
    assert res.mask.shape == (h, w) and res.mask.dtype == np.uint8
    assert int(res.mask.max()) < n
    if color:
        assert res.color.shape == (h, w, 3) and res.color.dtype == np.uint8
    else:
        assert res.color is None
    if overlay:
        assert res.overlay.shape == (h, w, 3) and res.overlay.dtype == np.uint8
    else:
        assert res.overlay is None
    assert {"preprocess", "inference", "postprocess", "total"} <= set(res.timings)
    assert all(v >= 0 for v in res.timings.values())


@pytest.mark.parametrize("th_dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("encoding", ["bgr8", "rgb8", "mono8"])
def test_shapes_for_all_inputs(seg, th_dtype, encoding):
    th, bgr = _frames(th_dtype=th_dtype)
    vis = {"bgr8": bgr, "rgb8": bgr[..., ::-1].copy(), "mono8": bgr[..., 1].copy()}[encoding]
    res = seg.run(th, vis, rgb_encoding=encoding)
    _check(res, H, W, seg.num_classes)
    np.testing.assert_array_equal(res.color, seg.palette[res.mask])  # palette lookup by class id


def test_rgb_and_bgr_orders_agree(seg):
    th, bgr = _frames(seed=3)
    a = seg.run(th, bgr, "bgr8")
    b = seg.run(th, np.ascontiguousarray(bgr[..., ::-1]), "rgb8")
    np.testing.assert_array_equal(a.fused_bgr, b.fused_bgr)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.overlay, b.overlay)


def test_fused_matches_network_output_in_bgr(seg):
    """The engine must feed RGB to the network and return its fused RGB as BGR (the usual swap bugs)."""
    th, bgr = _frames(seed=4, th_dtype=np.uint8)
    res = seg.run(th, bgr)
    ir = torch.from_numpy(th).float()
    ir = ((ir - ir.min()) / (ir.max() - ir.min()))[None, None]  # the checkpoint default: minmax
    vis = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        out = seg.model(ir, vis)
    want_rgb = (out["fused"][0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    diff = np.abs(res.fused_bgr[..., ::-1].astype(int) - want_rgb.astype(int))
    assert diff.max() <= 1
    assert (res.mask == out["logits"].argmax(1)[0].numpy()).mean() > 0.999


def test_overlay_blends_mask_colours_on_visible(seg):
    th, bgr = _frames(seed=5)
    res = seg.run(th, bgr)
    bg = res.mask == 0
    np.testing.assert_array_equal(res.overlay[bg], bgr[bg])  # class 0 is not tinted by default
    fg = ~bg
    if fg.any():
        want = np.round(bgr[fg] * 0.5 + res.color[fg][:, ::-1] * 0.5)
        assert np.abs(res.overlay[fg].astype(int) - want.astype(int)).max() <= 1


def test_want_flags_skip_outputs(seg):
    th, bgr = _frames()
    full = seg.run(th, bgr)
    res = seg.run(th, bgr, want_color=False, want_overlay=False)
    _check(res, H, W, seg.num_classes, color=False, overlay=False)
    np.testing.assert_array_equal(res.mask, full.mask)
    res = seg.run(th, bgr, want_color=False, want_overlay=True)
    assert res.color is None
    np.testing.assert_array_equal(res.overlay, full.overlay)


@pytest.mark.parametrize("rgb_hw,th_hw", [((37, 53), (37, 53)), ((37, 53), (29, 41)), ((96, 128), (48, 64)),
                                          ((50, 70), (120, 160))])
def test_odd_and_different_resolutions(seg, rgb_hw, th_hw):
    th, bgr = _frames(*rgb_hw, th_h=th_hw[0], th_w=th_hw[1])
    _check(seg.run(th, bgr), *rgb_hw, seg.num_classes)


def test_input_size_override_outputs_at_rgb_size(seg):
    small = seg.with_config(input_size=(32, 64), warmup=0)
    th, bgr = _frames(70, 90)
    res = small.run(th, bgr)
    _check(res, 70, 90, seg.num_classes)
    # nearest resize of the mask: still only class ids, and colours still match the palette
    np.testing.assert_array_equal(res.color, seg.palette[res.mask])


def test_identity_homography_equals_none(seg):
    th, bgr = _frames(seed=6)
    ident = seg.with_config(homography=np.eye(3), warmup=0)
    a, b = seg.run(th, bgr), ident.run(th, bgr)
    assert np.abs(a.fused_bgr.astype(int) - b.fused_bgr.astype(int)).max() <= 1
    assert (a.mask == b.mask).mean() > 0.99


def test_homography_changes_the_result(seg):
    th, bgr = _frames(seed=6)
    shifted = seg.with_config(homography=[1, 0, 15, 0, 1, -8, 0, 0, 1], warmup=0)
    assert not np.array_equal(seg.run(th, bgr).fused_bgr, shifted.run(th, bgr).fused_bgr)
    shifted.set_homography(None)
    np.testing.assert_array_equal(seg.run(th, bgr).fused_bgr, shifted.run(th, bgr).fused_bgr)


def test_run_batch_equals_single_runs(seg):
    pairs = [_frames(seed=s) for s in range(3)]
    batch = seg.run_batch([p[0] for p in pairs], [p[1] for p in pairs])
    assert len(batch) == 3
    for (th, bgr), res in zip(pairs, batch, strict=True):
        one = seg.run(th, bgr)
        assert np.abs(one.fused_bgr.astype(int) - res.fused_bgr.astype(int)).max() <= 1
        assert (one.mask == res.mask).mean() > 0.999
    mixed = seg.run_batch([pairs[0][0], _frames(40, 50)[0]], [pairs[0][1], _frames(40, 50)[1]])
    assert mixed[0].mask.shape == (H, W) and mixed[1].mask.shape == (40, 50)
    assert seg.run_batch([], []) == []


def test_percentile_engine_and_reset(seg):
    eng = seg.with_config(thermal_norm="percentile", thermal_smoothing=0.9, warmup=0)
    assert eng.normalizer.mode == "percentile" and eng.normalizer.smoothing == 0.9
    th, bgr = _frames()
    first = eng.run(th, bgr)
    eng.run(np.clip(th.astype(np.int64) * 2, 0, 65535).astype(np.uint16), bgr)
    eng.reset()
    np.testing.assert_array_equal(eng.run(th, bgr).fused_bgr, first.fused_bgr)


@pytest.mark.parametrize("thermal,rgb,enc,exc", [
    (np.zeros((H, W, 3), np.uint16), np.zeros((H, W, 3), np.uint8), "bgr8", ValueError),
    (np.zeros((H, W), np.uint16), np.zeros((H, W, 3), np.float32), "bgr8", TypeError),
    (np.zeros((H, W), np.uint16), np.zeros((H, W), np.uint8), "bgr8", ValueError),
    (np.zeros((H, W), np.uint16), np.zeros((H, W, 3), np.uint8), "mono8", ValueError),
    (np.zeros((H, W), np.uint16), np.zeros((H, W, 3), np.uint8), "yuv422", ValueError),
    (np.zeros((0, W), np.uint16), np.zeros((H, W, 3), np.uint8), "bgr8", ValueError),
    ([[1, 2]], np.zeros((H, W, 3), np.uint8), "bgr8", TypeError),
])
def test_bad_inputs_raise_clear_errors(seg, thermal, rgb, enc, exc):
    with pytest.raises(exc):
        seg.run(thermal, rgb, rgb_encoding=enc)


def test_from_checkpoint_metadata_drives_engine(tmp_path):
    torch.manual_seed(0)
    model = build_model("mafs_t", num_classes=4)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {"class_names": ["bg", "a", "b", "c"],
                                  "palette": [[0, 0, 0], [10, 20, 30], [40, 50, 60], [70, 80, 90]],
                                  "thermal_norm": {"mode": "fixed", "low": 1000, "high": 3000}})
    eng = FusionSegmenter.from_checkpoint(path, device="cpu", warmup=0)
    assert eng.class_names == ["bg", "a", "b", "c"] and eng.palette[1].tolist() == [10, 20, 30]
    assert eng.variant == "mafs_t" and eng.precision == "fp32" and eng.device == torch.device("cpu")
    assert eng.normalizer.mode == "fixed" and eng.normalizer.low == 1000
    over = FusionSegmenter.from_checkpoint(path, device="cpu", warmup=0, thermal_norm="minmax")
    assert over.normalizer.mode == "minmax"
    th, bgr = _frames()
    ref = FusionSegmenter(model, {"num_classes": 4}, EngineConfig(device="cpu", warmup=0,
                                                                  thermal_norm="fixed", thermal_low=1000,
                                                                  thermal_high=3000))
    np.testing.assert_array_equal(eng.run(th, bgr).fused_bgr, ref.run(th, bgr).fused_bgr)
    # the caller's model is not modified (the engine deep-copies before folding BN)
    assert any(isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats for m in model.modules())


def test_default_palette_is_msrs(seg):
    assert seg.num_classes == 9 and seg.palette.tolist() == [list(c) for c in MSRS_PALETTE]
    assert seg.class_names[2] == "person"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_request_falls_back_to_cpu_with_warning():
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert resolve_device("cuda:0") == torch.device("cpu")
    with pytest.warns(UserWarning, match="fp16"):
        assert resolve_precision("fp16", torch.device("cpu")) == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError):
        resolve_precision("int4", torch.device("cpu"))
    with pytest.raises(ValueError):
        resolve_device("tpu")


def test_warmup_runs_the_real_path_and_leaves_no_state(seg, monkeypatch):
    eng = seg.with_config(thermal_norm="percentile", thermal_smoothing=0.9, warmup=0)
    th, bgr = _frames()
    cold = eng.run(th, bgr)
    calls = []
    real = eng.run_batch
    monkeypatch.setattr(eng, "run_batch", lambda ths, rgbs, *a, **k: calls.append(
        (len(ths), ths[0].shape, ths[0].dtype, rgbs[0].shape)) or real(ths, rgbs, *a, **k))
    eng.warmup((H, W), iters=3, batch=2)
    assert calls == [(2, (H, W), np.uint8, (H, W, 3))] * 2 + [(2, (H, W), np.uint16, (H, W, 3))]
    assert eng.normalizer._bounds is None  # the percentile EMA did not learn the dummy frames
    np.testing.assert_array_equal(eng.run(th, bgr).fused_bgr, cold.fused_bgr)


def test_warmup_and_release():
    eng = FusionSegmenter.from_variant("mafs_t", device="cpu", warmup=1, warmup_size=(32, 32))
    th, bgr = _frames()
    _check(eng.run(th, bgr), H, W, 9)
    eng.release()
    assert eng.model is None
    with pytest.raises(RuntimeError, match="released"):
        eng.run(th, bgr)
