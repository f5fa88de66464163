"""Test-time augmentation (mafs_core.tta): what the engine, the CLI and the node do with tta_scales / tta_flip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mafs_core.engine import FusionSegmenter
from mafs_core.tta import check_tta

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("scales", [(), (0.75, 1.25), (1.0, 1.0), (1.0, 0.1), (1.0, 5.0)])
def test_unusable_scale_sets_are_refused(scales) -> None:
    with pytest.raises(ValueError, match="tta_scales"):
        check_tta(scales, False)
    with pytest.raises(ValueError, match="tta_scales"):
        FusionSegmenter.from_variant("mafs_t", device="cpu", warmup=0, tta_scales=scales)


def _pair(sample_data: Path, name: str = "00174D") -> tuple[np.ndarray, np.ndarray]:
    msrs = sample_data / "msrs"
    return (cv2.imread(str(msrs / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(msrs / "vi" / f"{name}.png"), cv2.IMREAD_COLOR))


def test_flip_averaging_makes_the_mask_mirror_symmetric(sample_data: Path) -> None:
    """With tta_flip, a mirrored frame gets the mirrored mask (the average is the same two views); the fused
    image stays the plain pass's, and the mask differs from the plain one (the averaging ran)."""
    ir, vis = _pair(sample_data)
    plain = FusionSegmenter.from_variant("mafs_t", device="cpu", warmup=0)
    tta = FusionSegmenter.from_variant("mafs_t", device="cpu", warmup=0, tta_scales=(0.75, 1.0), tta_flip=True)
    a = tta.run(ir, vis, want_color=False, want_overlay=False)
    b = tta.run(ir[:, ::-1].copy(), vis[:, ::-1].copy(), want_color=False, want_overlay=False)
    p = plain.run(ir, vis, want_color=False, want_overlay=False)
    assert (a.mask == b.mask[:, ::-1]).mean() > 0.999
    assert np.array_equal(a.fused_bgr, p.fused_bgr)
    assert (a.mask != p.mask).any()
    assert "test-time augmentation: scales [0.75, 1.0] + flip" in tta.describe()
    assert "test-time augmentation" not in plain.describe()


def test_shipped_weights_with_tta_on_the_sample_frames(sample_data: Path) -> None:
    """The set docs/training.md measured (0.75, 1.0, 1.25 + flip) on the committed real frames: the thing classes
    stay segmented at least as a plain pass's floors ask (tests/test_shipped_weights.py)."""
    from mafs_core.metrics import ConfusionMatrix

    seg = FusionSegmenter.from_checkpoint(None, device="cpu", warmup=0, tta_scales=(0.75, 1.0, 1.25), tta_flip=True)
    cm = ConfusionMatrix(9)
    for n in ("00028N", "00174D", "00196D", "00400D"):
        ir, vis = _pair(sample_data, n)
        out = seg.run(ir, vis, want_color=False, want_overlay=False)
        cm.update(out.mask, cv2.imread(str(sample_data / "msrs" / "label" / f"{n}.png"), cv2.IMREAD_GRAYSCALE))
    iou = cm.iou()
    assert iou[1] > 0.5 and iou[2] > 0.4 and iou[3] > 0.2, iou[1:4].round(3)


def test_eval_cli_takes_tta_and_reports_it(sample_data: Path, tmp_path: Path) -> None:
    msrs = sample_data / "msrs"
    r = subprocess.run([sys.executable, "-m", "mafs_core.cli", "eval", "--ir", str(msrs / "ir"), "--vis",
                        str(msrs / "vi"), "--random-init", "mafs_t", "--device", "cpu", "--limit", "1",
                        "--warmup", "0", "--tta-scales", "1.0", "1.25", "--tta-flip", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads((tmp_path / "report.json").read_text())["run"]
    assert "test-time augmentation: scales [1.0, 1.25] + flip" in run["model"]
    r = subprocess.run([sys.executable, "-m", "mafs_core.cli", "eval", "--ir", str(msrs / "ir"), "--vis",
                        str(msrs / "vi"), "--random-init", "mafs_t", "--device", "cpu", "--limit", "1",
                        "--tta-scales", "0.5", "--out", str(tmp_path / "bad")],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 2 and "tta_scales must include 1.0" in r.stdout, r.stdout + r.stderr


def test_bag_eval_options_carry_tta_to_the_engine() -> None:
    from mafs_core.bag import EvalOptions, load_engine

    seg = load_engine(EvalOptions(random_init="mafs_t", device="cpu", tta_scales=(1.0, 1.25), tta_flip=True))
    assert (seg.config.tta_scales, seg.config.tta_flip) == ((1.0, 1.25), True)
