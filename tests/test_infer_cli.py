"""`mafs infer` end to end on real MSRS pairs, through the installed `mafs` entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mafs_core.checkpoint import save_checkpoint
from mafs_core.model import build_model

REPO = Path(__file__).resolve().parent.parent
NAMES = ["00004N", "00028N", "00081D"]  # in data/samples/msrs


def _mafs(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "mafs"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mafs_core"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def three_pairs(sample_data, tmp_path_factory) -> tuple[Path, Path]:
    """Three real MSRS sample pairs (symlinked: the data is never copied) plus one unmatched name to be skipped."""
    root = tmp_path_factory.mktemp("pairs")
    for mod in ("ir", "vi"):
        (root / mod).mkdir()
        for n in NAMES:
            (root / mod / f"{n}.png").symlink_to(sample_data / "msrs" / mod / f"{n}.png")
    shutil.copy(sample_data / "msrs" / "ir" / "00174D.png", root / "ir" / "only_ir.png")
    return root / "ir", root / "vi"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "mafs_t.safetensors"
    save_checkpoint(path, build_model("mafs_t", num_classes=9), {"training": {"note": "test"}})
    return path


@pytest.mark.timeout(600)
def test_infer_writes_all_outputs(three_pairs, checkpoint, tmp_path):
    ir, vis = three_pairs
    out = tmp_path / "out"
    proc = _mafs("infer", "--ir", str(ir), "--vis", str(vis), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "| inference |" in proc.stdout and "3 pairs" in proc.stdout
    for n in NAMES:
        fused = cv2.imread(str(out / "fused" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / "mask" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.imread(str(out / "color" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(out / "overlay" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        assert fused.shape == (480, 640, 3) and overlay.shape == (480, 640, 3) and color.shape == (480, 640, 3)
        assert mask.shape == (480, 640) and mask.dtype == np.uint8 and int(mask.max()) < 9
        # colour PNGs are stored so that viewers show the palette's RGB colours
        from mafs_core.classes import default_palette

        np.testing.assert_array_equal(color[..., ::-1], default_palette(9)[mask])
        assert fused.std() > 1.0  # a picture, not a constant
    assert not (out / "fused" / "only_ir.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 3 and summary["variant"] == "mafs_t" and summary["device"] == "cpu"
    assert set(summary["median_ms"]) >= {"preprocess", "inference", "postprocess", "total"}


def test_infer_random_init_and_errors(three_pairs, tmp_path, capsys):
    """In-process (no interpreter start-up): --random-init with --input-size, and the error paths."""
    from mafs_core.cli import main as mafs

    ir, vis = three_pairs
    assert mafs(["infer", "--ir", str(ir), "--vis", str(vis), "--out", str(tmp_path / "r"), "--random-init",
                 "--limit", "1", "--device", "cpu", "--input-size", "128x96", "-q"]) == 0
    assert cv2.imread(str(tmp_path / "r" / "mask" / f"{NAMES[0]}.png"), cv2.IMREAD_UNCHANGED).shape == (480, 640)
    # a pickle checkpoint is refused without --allow-pickle
    pt = tmp_path / "m.pt"
    torch.save({"model": build_model("mafs_t").state_dict(), "metadata": {"variant": "mafs_t", "num_classes": 9}}, pt)
    capsys.readouterr()
    assert mafs(["infer", "--ir", str(ir), "--vis", str(vis), "--out", str(tmp_path / "p"), "--checkpoint",
                 str(pt)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    # missing folders are a clear error, not a traceback
    assert mafs(["infer", "--ir", str(tmp_path / "nope"), "--vis", str(vis), "--out", str(tmp_path / "x"),
                 "--random-init"]) == 2
    assert "not a folder" in capsys.readouterr().err
