"""MFNet teacher: explicit pickle opt-in, strict load, shapes, and person IoU on real MSRS person masks
(the published number, 0.30, validates the architecture rebuild)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mafs_core.datasets import build_dataset
from mafs_core.teacher import MFNet, load_mfnet_teacher

WEIGHTS = "teachers/mfnet/mfnet_final.pth"


def test_refuses_pickle_without_opt_in(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(PermissionError, match="allow_pickle"):
        load_mfnet_teacher(shared_data / WEIGHTS)
    with pytest.raises(FileNotFoundError):
        load_mfnet_teacher(tmp_path / "nope.pth", allow_pickle=True)
    bad = tmp_path / "bad.pth"
    sd = MFNet(9).state_dict()
    sd.pop("decode2.bn.running_var")
    torch.save(sd, bad)
    with pytest.raises(ValueError, match="not an MFNet state_dict"):
        load_mfnet_teacher(bad, allow_pickle=True)


def test_strict_load_and_shapes(shared_data: Path) -> None:
    raw = torch.load(shared_data / WEIGHTS, map_location="cpu", weights_only=True)
    net = load_mfnet_teacher(shared_data / WEIGHTS, allow_pickle=True, wrap=False)
    # strict: nothing missing, nothing extra (the file predates BatchNorm's num_batches_tracked counters)
    assert {k for k in net.state_dict() if not k.endswith("num_batches_tracked")} == set(raw)
    assert torch.equal(net.state_dict()["decode4.conv.weight"], raw["decode4.conv.weight"])
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(0.74e6, rel=0.02)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    teacher = load_mfnet_teacher(shared_data / WEIGHTS, allow_pickle=True)
    with torch.no_grad():
        out = teacher(torch.rand(2, 1, 50, 70), torch.rand(2, 3, 50, 70))  # padded to /16 inside, cropped back
    assert out.shape == (2, 9, 50, 70) and torch.isfinite(out).all()


def test_person_iou_on_real_masks(shared_data: Path) -> None:
    teacher = load_mfnet_teacher(shared_data / WEIGHTS, allow_pickle=True)
    ds = build_dataset("paired", shared_data / "msrs_person_masks", num_classes=256, thermal_norm_8bit="fixed")
    assert len(ds) == 8
    ious, inter, union = [], 0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            pred = teacher(s["ir"][None], s["vis"][None]).argmax(1)[0].numpy() == 2  # MFNet class 2 = person
            gt = s["label"].numpy() == 255
            i_, u_ = int((pred & gt).sum()), int((pred | gt).sum())
            ious.append(i_ / max(u_, 1))
            inter, union = inter + i_, union + u_
    # measured with this rebuild: mean of per-image IoU 0.2998 (README: 0.30), pooled IoU 0.3736
    assert np.mean(ious) == pytest.approx(0.300, abs=0.01)
    assert inter / union == pytest.approx(0.374, abs=0.01)
