"""`mafs register`: thermal->RGB homography from recorded pairs (mafs_core.registration).

Real pairs: the committed MSRS samples (aligned) warped with a known homography, and the misaligned
sample (ir_warp against vi). MSRS ir/vi are aligned only to a few pixels themselves (a ~1 % horizontal
scale between the cameras: edge ECC of ir against vi from the identity lands 2-5 px away, the same from
either side), so errors against a ground truth that assumes perfect ir/vi alignment have that floor.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from mafs_core import registration as reg
from mafs_core.cli import main as mafs_main
from mafs_core.preprocess import as_homography, register_thermal

DAY = ("00081D", "00196D", "00258D")  # committed daylight sample pairs whose own ir/vi residual is < 5 px
SIZE = (480, 640)


def _similarity(angle_deg: float, scale: float, tx: float, ty: float, size=SIZE) -> np.ndarray:
    c = ((size[1] - 1) / 2.0, (size[0] - 1) / 2.0)
    m = np.vstack([cv2.getRotationMatrix2D(c, angle_deg, scale), [0.0, 0.0, 1.0]])
    m[0, 2] += tx
    m[1, 2] += ty
    return m


H_TRUE = _similarity(3.0, 1.04, 12.0, -8.0)  # thermal (scaled) px -> RGB px of the simulated rig


def _pair(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    return (cv2.imread(str(root / "msrs" / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(root / "msrs" / "vi" / f"{name}.png"), cv2.IMREAD_COLOR))


def _thermal_view(ir_aligned: np.ndarray, h: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """What a thermal camera with thermal->RGB homography `h` records: thermal(x) = ir_aligned(h x)."""
    out = cv2.warpPerspective(ir_aligned, h, (ir_aligned.shape[1], ir_aligned.shape[0]),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return out if size is None else cv2.resize(out, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _own_offset(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """The sample pair's own ir->vi residual (MSRS is aligned to a few px only), measured from the identity."""
    res = reg.register_pair(ir, vis)
    assert res.ok and reg.grid_error(res.h_scaled, np.eye(3), SIZE)[0] < 5.0
    return res.h_scaled


def _check_recovered(h_est: np.ndarray, h_true: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> None:
    """Within 3 px of the known warp on top of the pair's own residual, and within 6 px of the bare warp."""
    ref = _own_offset(ir, vis) @ h_true
    err_ref, err_true = reg.grid_error(h_est, ref, SIZE)[0], reg.grid_error(h_est, h_true, SIZE)[0]
    assert err_ref <= 3.0 and err_true <= 6.0, (err_ref, err_true)


def _engine_ncc(thermal_raw: np.ndarray, h_engine: np.ndarray, ir_aligned: np.ndarray) -> float:
    """NCC of the engine's own warp (register_thermal) of the raw thermal with the aligned IR, inside the view."""
    t = torch.from_numpy(thermal_raw.astype(np.float32) / 255.0)[None, None]
    warped = register_thermal(t, ir_aligned.shape[:2], h_engine)[0, 0].numpy()
    seen = register_thermal(torch.ones_like(t), ir_aligned.shape[:2], h_engine)[0, 0].numpy() > 0.999
    a, b = warped[seen], ir_aligned.astype(np.float32)[seen] / 255.0
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


# ---------------------------------------------------------------- geometry helpers


def test_scale_matrix_matches_cv2_resize():
    img = np.zeros((48, 64), np.float32)
    img[20, 30] = 1.0
    big = cv2.resize(img, (128, 96), interpolation=cv2.INTER_LINEAR)
    s = reg.scale_matrix((48, 64), (96, 128))
    x, y = reg.apply_h(s, np.array([[30.0, 20.0]]))[0]
    yy, xx = np.unravel_index(np.argmax(big), big.shape)
    assert abs(x - (xx + 0.5)) <= 0.5 and abs(y - (yy + 0.5)) <= 0.5  # the peak spreads over 2x2 pixels


def test_fov_guess_is_a_centred_scale():
    h = reg.fov_guess(SIZE, SIZE, ir_hfov=50.0, rgb_hfov=40.0)
    s = math.tan(math.radians(25)) / math.tan(math.radians(20))
    centre = np.array([[(SIZE[1] - 1) / 2, (SIZE[0] - 1) / 2]])
    np.testing.assert_allclose(reg.apply_h(h, centre), centre, atol=1e-9)
    assert h[0, 0] == pytest.approx(s) and h[1, 1] == pytest.approx(s)
    with pytest.raises(ValueError):
        reg.fov_guess(SIZE, SIZE, 0.0, 40.0)


def test_combine_outvotes_an_outlier():
    good = [_similarity(3.0, 1.04, 12.0 + d, -8.0) for d in (-0.5, 0.0, 0.5)]
    bad = _similarity(-10.0, 0.9, 60.0, 30.0)
    h, inliers, spread = reg.combine([*good, bad], SIZE)
    assert inliers == [True, True, True, False]
    assert reg.grid_error(h, H_TRUE, SIZE)[0] < 0.5 and spread < 1.0


# ---------------------------------------------------------------- synthetic rig on real pairs


def test_recovers_known_homography_and_engine_lines_up(sample_data):
    """Direction check: the estimate is thermal px -> RGB px, and the engine's own warp with it aligns."""
    ir, vis = _pair(sample_data, DAY[0])
    thermal = _thermal_view(ir, H_TRUE)
    res = reg.register_pair(thermal, vis)
    assert res.ok, res.message
    _check_recovered(res.h_scaled, H_TRUE, ir, vis)
    assert reg.grid_error(np.eye(3), H_TRUE, SIZE)[0] > 15  # the rig really is off
    aligned = _engine_ncc(thermal, res.h_scaled, ir)
    assert aligned > 0.8  # two bilinear resamplings (the simulated camera, then the engine) blur a little
    assert aligned > _engine_ncc(thermal, np.linalg.inv(res.h_scaled), ir) + 0.2  # the other direction is wrong
    assert aligned > _engine_ncc(thermal, np.eye(3), ir) + 0.2


def test_smaller_thermal_frame_gets_an_engine_homography(sample_data):
    """A 320x240 thermal camera: h_engine maps its raw pixels, as register_thermal warps them."""
    ir, vis = _pair(sample_data, DAY[1])
    thermal = _thermal_view(ir, H_TRUE, size=(240, 320))
    out = reg.register_pairs([("small", thermal, vis)])
    assert out.thermal_size == (240, 320) and out.rgb_size == SIZE
    _check_recovered(out.h_scaled, H_TRUE, ir, vis)
    np.testing.assert_allclose(out.h_engine, as_homography(out.h_scaled @ reg.scale_matrix((240, 320), SIZE)))
    assert _engine_ncc(thermal, out.h_engine, ir) > 0.85
    assert _engine_ncc(thermal, out.h_scaled, ir) < 0.5  # the scaled-frame matrix alone would be wrong


def test_joint_pairs_with_an_unrelated_pair(sample_data):
    """Several pairs of one rig vote; a pair whose RGB frame shows another scene does not move the result."""
    pairs = []
    for name in DAY:
        ir, vis = _pair(sample_data, name)
        pairs.append((name, _thermal_view(ir, H_TRUE), vis))
    ir_other, _ = _pair(sample_data, "00004N")
    pairs.append(("mismatched", _thermal_view(ir_other, H_TRUE), pairs[0][2]))
    out = reg.register_pairs(pairs)
    assert reg.grid_error(out.h_scaled, H_TRUE, SIZE)[0] <= 5.0
    named = {p.name: p for p in out.pairs}
    assert all(named[n].inlier for n in DAY)
    assert not named["mismatched"].inlier
    assert out.ncc_after > out.ncc_before + 0.1


def test_fov_initial_guess_helps_a_zoomed_rig(sample_data):
    """A narrower RGB lens (the thermal frame magnified 1.25x) is found from the fields of view."""
    ir, vis = _pair(sample_data, DAY[2])
    s = 1.25
    h_true = _similarity(1.0, s, 5.0, 4.0)
    thermal = _thermal_view(ir, h_true)
    rgb_hfov = 40.0
    ir_hfov = math.degrees(2 * math.atan(s * math.tan(math.radians(rgb_hfov / 2))))
    out = reg.register_pairs([("zoom", thermal, vis)], fov=(ir_hfov, rgb_hfov))
    _check_recovered(out.h_scaled, h_true, ir, vis)


# ---------------------------------------------------------------- the misaligned MSRS sample


def _ground_truth(ir_warp: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """ir_warp px -> ir px by intensity ECC (same modality: very accurate); ir and vi are aligned."""
    h, cc = reg.ecc_pyramid(reg.thermal_to_float(ir_warp), reg.thermal_to_float(ir),
                            opts=reg.RegistrationOptions(levels=4), edges=False)
    assert cc > 0.95
    return h


def _misaligned(root: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = root / "msrs_misaligned"
    return (cv2.imread(str(d / "ir_warp" / f"{name}.png"), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(d / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(d / "vi" / f"{name}.png"), cv2.IMREAD_COLOR))


def _check_misaligned(ir_warp, ir, vis) -> tuple[float, float, float, float]:
    gt = _ground_truth(ir_warp, ir)
    res = reg.register_pair(ir_warp, vis)
    assert res.h_scaled is not None, res.message
    t, m, v = reg.prepare(ir_warp, vis)
    return (reg.grid_error(np.eye(3), gt, SIZE)[0], reg.grid_error(res.h_scaled, gt, SIZE)[0],
            reg.gradient_ncc(t, v, np.eye(3), mask=m), reg.gradient_ncc(t, v, res.h_scaled, mask=m))


def test_misaligned_sample(sample_data):
    before, after, ncc_before, ncc_after = _check_misaligned(*_misaligned(sample_data, "00028N"))
    assert before > 20
    assert after <= 5.0, after  # ~4 px: mostly the ir/vi offset of MSRS itself (module docstring)
    assert ncc_after > ncc_before + 0.05


def test_all_misaligned_pairs(shared_data):
    root = shared_data / "msrs_misaligned"
    names = sorted(p.stem for p in (root / "ir_warp").glob("*.png"))
    assert len(names) == 20
    rows = [_check_misaligned(*_misaligned(shared_data, n)) for n in names]
    before, after, ncc0, ncc1 = (np.array(c) for c in zip(*rows, strict=True))
    assert np.median(after) <= 5.0 and (after <= 6.0).sum() >= 15, after.round(1).tolist()
    assert after.mean() < before.mean()
    assert (ncc1 > ncc0).sum() >= 18


# ---------------------------------------------------------------- command line


def _write_pairs(folder: Path, pairs) -> tuple[Path, Path]:
    (folder / "ir").mkdir(parents=True)
    (folder / "vi").mkdir()
    for name, ir, vis in pairs:
        cv2.imwrite(str(folder / "ir" / f"{name}.png"), ir)
        cv2.imwrite(str(folder / "vi" / f"{name}.png"), vis)
    return folder / "ir", folder / "vi"


def _check_outputs(out: Path, h_true: np.ndarray) -> None:
    params = yaml.safe_load((out / "registration.yaml").read_text())
    values = params["/**"]["ros__parameters"]["registration"]["homography"]
    assert len(values) == 9
    assert reg.grid_error(as_homography(values), h_true, SIZE)[0] <= 5.0
    img = cv2.imread(str(out / "overlay.png"))
    assert img is not None and img.shape == (SIZE[0], 2 * SIZE[1], 3)


def test_cli_folders(sample_data, tmp_path, capsys):
    d = sample_data / "msrs_misaligned"
    out = tmp_path / "out"
    rc = mafs_main(["register", "--ir", str(d / "ir_warp"), "--vis", str(d / "vi"), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "ECC correlation" in text and "gradient NCC" in text
    ir_warp, ir, _ = _misaligned(sample_data, "00028N")
    params = yaml.safe_load((out / "registration.yaml").read_text())
    h = as_homography(params["/**"]["ros__parameters"]["registration"]["homography"])
    assert reg.grid_error(h, _ground_truth(ir_warp, ir), SIZE)[0] <= 5.0
    assert (out / "overlay.png").is_file() and (out / "registration.json").is_file()


def test_cli_bag(sample_data, tmp_path, capsys):
    from mafs_core.bag import MakeConfig, make_bag

    pairs = []
    for name in DAY[:2]:
        ir, vis = _pair(sample_data, name)
        pairs.append((name, _thermal_view(ir, H_TRUE), vis))
    ir_dir, vi_dir = _write_pairs(tmp_path / "pairs", pairs)
    bag = tmp_path / "rig.mcap.d"
    make_bag(ir_dir, vi_dir, bag, cfg=MakeConfig(rate=10))
    out = tmp_path / "out"
    rc = mafs_main(["register", "--bag", str(bag), "--out", str(out)])
    assert rc == 0, capsys.readouterr().out
    _check_outputs(out, H_TRUE)


def test_cli_fails_clearly(sample_data, tmp_path, capsys):
    flat = np.full(SIZE, 128, np.uint8)
    ir_dir, vi_dir = _write_pairs(tmp_path / "flat", [("flat", flat, cv2.cvtColor(flat, cv2.COLOR_GRAY2BGR))])
    rc = mafs_main(["register", "--ir", str(ir_dir), "--vis", str(vi_dir), "--out", str(tmp_path / "o1")])
    assert rc == 1 and "registration failed" in capsys.readouterr().out
    assert not (tmp_path / "o1" / "registration.yaml").exists()

    (tmp_path / "empty_ir").mkdir()
    (tmp_path / "empty_vi").mkdir()
    rc = mafs_main(["register", "--ir", str(tmp_path / "empty_ir"), "--vis", str(tmp_path / "empty_vi"),
                    "--out", str(tmp_path / "o2")])
    assert rc == 1 and "0 pair(s)" in capsys.readouterr().out

    ir, vis = _pair(sample_data, DAY[0])
    ir_dir, vi_dir = _write_pairs(tmp_path / "one", [("a", ir, vis)])
    rc = mafs_main(["register", "--ir", str(ir_dir), "--vis", str(vi_dir), "--min-pairs", "2",
                    "--out", str(tmp_path / "o3")])
    assert rc == 1 and "need at least 2" in capsys.readouterr().out

    rc = mafs_main(["register", "--out", str(tmp_path / "o4")])
    assert rc == 2 and "either --ir DIR --vis DIR, or --bag BAG" in capsys.readouterr().out


def test_disagreeing_pairs_fail(monkeypatch, sample_data):
    """Three pairs that each register but agree on nothing: no result rather than an arbitrary one."""
    estimates = iter([_similarity(0.0, 1.0, 0.0, 0.0), _similarity(8.0, 1.0, 40.0, 0.0),
                      _similarity(-8.0, 1.0, 0.0, 40.0)])
    monkeypatch.setattr(reg, "register_pair", lambda ir, vis, init, opts, name: reg.PairResult(
        name, True, next(estimates), 0.3))
    ir, vis = _pair(sample_data, DAY[0])
    with pytest.raises(reg.RegistrationError, match="disagree"):
        reg.register_pairs([(str(i), ir, vis) for i in range(3)])
