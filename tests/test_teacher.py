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


SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "mafs_t.safetensors"


def _sample_tensors(sample_data: Path, name: str = "00174D") -> tuple[torch.Tensor, torch.Tensor]:
    import cv2

    msrs = sample_data / "msrs"
    ir = cv2.imread(str(msrs / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)[:256, :320]
    vis = cv2.imread(str(msrs / "vi" / f"{name}.png"), cv2.IMREAD_COLOR)[:256, :320, ::-1]
    return (torch.from_numpy(ir.astype(np.float32) / 255.0)[None, None],
            torch.from_numpy(np.ascontiguousarray(vis).astype(np.float32) / 255.0).permute(2, 0, 1)[None])


def test_mafs_checkpoint_as_teacher_plain_and_with_tta(sample_data: Path) -> None:
    """A MAFS checkpoint serves as the training teacher: plain, it is the network's own logits at input size; with
    tta_flip the mirrored input gets the mirrored logits (both views averaged)."""
    from mafs_core.checkpoint import load_checkpoint
    from mafs_core.teacher import load_teacher

    ir, vis = _sample_tensors(sample_data)
    plain = load_teacher(SHIPPED)
    model, _ = load_checkpoint(SHIPPED)
    with torch.no_grad():
        t = plain(ir, vis)
        ref = model.eval()(ir, vis)["logits"]
    assert t.shape == (1, 9, 256, 320)
    assert (t.argmax(1) == ref.argmax(1)).float().mean() > 0.999  # BN folded for speed: same function
    tta = load_teacher(SHIPPED, tta_scales=(0.75, 1.0), tta_flip=True)
    a, b = tta(ir, vis), tta(ir.flip(-1), vis.flip(-1))
    assert a.shape == t.shape and torch.allclose(a, b.flip(-1), atol=1e-4)
    assert not torch.allclose(a, t, atol=1e-3)  # the views were averaged
    with pytest.raises(ValueError, match="need a MAFS teacher"):
        load_teacher("teachers/mfnet/mfnet_final.pth", allow_pickle=True, tta_flip=True)
