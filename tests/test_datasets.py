"""Datasets: every layout from small generated fixtures, augmentation consistency, clear errors, real MSRS."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mafs_core.datasets import (
    AugmentConfig,
    PairDataset,
    build_dataset,
    cutmix,
    detect_kind,
    holdout_split,
    list_records,
)

H, W = 48, 64


def _pattern(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IR ramp, VIS = same ramp (BGR), label = class by IR band: geometry can be checked across modalities."""
    x = np.tile(np.linspace(0, 255, W, dtype=np.float32), (H, 1))
    x = np.roll(x, 3 * i, axis=1)
    ir = x.astype(np.uint8)
    vis = np.stack([ir, ir, ir], -1)
    label = (ir // 86).astype(np.uint8)  # 0, 1, 2
    return ir, vis, label


def _write_split(base: Path, ir_dir: str, vi_dir: str, lab_dir: str | None, n: int = 3, ext: str = ".png") -> None:
    for d in (ir_dir, vi_dir, lab_dir):
        if d:
            (base / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ir, vis, label = _pattern(i)
        cv2.imwrite(str(base / ir_dir / f"s{i:03d}{ext}"), ir)
        cv2.imwrite(str(base / vi_dir / f"s{i:03d}{ext}"), vis)
        if lab_dir:
            cv2.imwrite(str(base / lab_dir / f"s{i:03d}.png"), label)


def _check_sample(s: dict, h: int = H, w: int = W, labelled: bool = True, num_classes: int = 3) -> None:
    assert s["ir"].shape == (1, h, w) and s["ir"].dtype == torch.float32
    assert s["vis"].shape == (3, h, w) and s["vis"].dtype == torch.float32
    assert s["label"].shape == (h, w) and s["label"].dtype == torch.long
    assert 0.0 <= float(s["ir"].min()) and float(s["ir"].max()) <= 1.0
    assert 0.0 <= float(s["vis"].min()) and float(s["vis"].max()) <= 1.0
    assert bool(s["has_label"]) == labelled
    if labelled:
        assert set(s["label"].unique().tolist()) <= set(range(num_classes))
    else:
        assert (s["label"] == 255).all()


@pytest.mark.parametrize("kind,dirs", [
    ("msrs", ("ir", "vi", "Segmentation_labels")),
    ("fmb", ("Infrared", "Visible", "Label")),
    ("pst900", ("thermal", "rgb", "labels")),
])
def test_split_layouts(tmp_path: Path, kind: str, dirs: tuple[str, str, str]) -> None:
    for split in ("train", "test"):
        _write_split(tmp_path / split, *dirs, n=3 if split == "train" else 2)
    assert detect_kind(tmp_path, "train") == kind
    ds = build_dataset("auto", tmp_path, "test", num_classes=3)
    assert len(ds) == 2 and [r.name for r in ds.records] == ["s000", "s001"]
    s = ds[1]
    _check_sample(s)
    label = _pattern(1)[2]
    assert torch.equal(s["label"], torch.from_numpy(label.astype(np.int64)))
    assert len(build_dataset(kind, tmp_path, "train", num_classes=3)) == 3


def test_paired_layout_unlabelled_and_labelled(tmp_path: Path) -> None:
    _write_split(tmp_path / "a", "ir", "vi", None, ext=".jpg")
    assert detect_kind(tmp_path / "a") == "paired"
    ds = build_dataset("auto", tmp_path / "a")
    _check_sample(ds[0], labelled=False)
    _write_split(tmp_path / "b", "ir", "vis", "label")
    _check_sample(build_dataset("paired", tmp_path / "b", num_classes=3)[2])


def test_mfnet_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(4):
        ir, vis, label = _pattern(i)
        vis = vis.copy()
        vis[..., 0] = 7  # OpenCV order B,G,R: blue channel constant -> RGB[2] == 7/255
        cv2.imwrite(str(tmp_path / "images" / f"{i:05d}N.png"), np.dstack([vis, ir]))
        cv2.imwrite(str(tmp_path / "labels" / f"{i:05d}N.png"), label)
    (tmp_path / "train.txt").write_text("00000N\n00001N\n00002N\n")
    (tmp_path / "test.txt").write_text("00003N\n")
    assert detect_kind(tmp_path) == "mfnet"
    ds = build_dataset("auto", tmp_path, "train", num_classes=3, thermal_norm_8bit="fixed")
    assert len(ds) == 3
    s = ds[0]
    _check_sample(s)
    ir, _, _ = _pattern(0)
    assert torch.allclose(s["vis"][2], torch.full((H, W), 7 / 255))
    assert torch.allclose(s["ir"][0], torch.from_numpy(ir.astype(np.float32) / 255))
    (tmp_path / "val.txt").write_text("00009N\n")
    with pytest.raises(ValueError, match="00009N"):
        build_dataset("mfnet", tmp_path, "val")


def test_16bit_thermal_percentile(tmp_path: Path) -> None:
    _write_split(tmp_path, "ir", "vi", None, n=1)
    ir16 = np.full((H, W), 3000, np.uint16)
    ir16[:, W // 2:] = 4000
    ir16[0, 0] = 60000  # a single hot pixel must not squash the scene (percentile, not min-max)
    cv2.imwrite(str(tmp_path / "ir" / "s000.png"), ir16)
    s = build_dataset("paired", tmp_path)[0]
    assert float(s["ir"][0, 5, 5]) < 0.05 and float(s["ir"][0, 5, -5]) > 0.95


def test_augmentation_consistent_and_replayable(tmp_path: Path) -> None:
    _write_split(tmp_path, "ir", "vi", "label", n=2)
    aug = AugmentConfig(resize=[96, 128], crop=[40, 56], scale=[0.8, 1.5], hflip=True,
                        brightness=0.3, contrast=0.3, saturation=0.3)
    ds = build_dataset("paired", tmp_path, num_classes=3, train=True, augment=aug, seed=3)
    flips = 0
    for epoch in range(8):
        ds.set_epoch(epoch)
        s = ds[0]
        _check_sample(s, 40, 56)
        ir, lab = s["ir"][0], s["label"]
        # geometry identical for IR and label: the label is still the IR band index (up to resampling edges)
        expected = (ir * 255 + 0.5).long() // 86
        assert (expected == lab).float().mean() > 0.9
        # photometric jitter touches VIS only: IR stays a pure function of the geometry
        d = ir[:, 1:] - ir[:, :-1]
        flips += int(float(d[(d.abs() < 0.2)].mean()) < 0)  # ramp direction: flipped or not
    assert 0 < flips < 8  # both orientations occur over 8 epochs
    ds.set_epoch(2)
    a, b = ds[1], ds[1]
    assert torch.equal(a["vis"], b["vis"]) and torch.equal(a["label"], b["label"])
    ds.set_epoch(3)
    assert not torch.equal(ds[1]["ir"], a["ir"])
    # vis jitter actually happened: VIS differs from the (identical-content) IR image
    assert not torch.allclose(a["vis"].mean(0), a["ir"][0], atol=0.02)


def test_repeat_gives_distinct_augmentations_of_each_pair(tmp_path: Path) -> None:
    _write_split(tmp_path, "ir", "vi", "label", n=2)
    aug = AugmentConfig(resize=[96, 128], crop=[40, 56], scale=[0.8, 1.5], hflip=True)
    once = build_dataset("paired", tmp_path, num_classes=3, train=True, augment=aug, seed=3)
    thrice = build_dataset("paired", tmp_path, num_classes=3, train=True, augment=aug, seed=3, repeat=3)
    assert len(once) == 2 and len(thrice) == 6
    assert torch.equal(thrice[0]["ir"], once[0]["ir"])  # the first pass is the plain dataset
    assert thrice[2]["name"] == thrice[4]["name"] == once[0]["name"]
    assert not torch.equal(thrice[2]["ir"], thrice[4]["ir"])  # later passes: new crops of the same pair
    with pytest.raises(ValueError, match="repeat"):
        build_dataset("paired", tmp_path, num_classes=3, repeat=0)


def test_errors_are_clear(tmp_path: Path) -> None:
    _write_split(tmp_path / "m", "ir", "vi", None, n=3)
    (tmp_path / "m" / "vi" / "s001.png").rename(tmp_path / "m" / "vi" / "zzz.png")
    with pytest.raises(ValueError, match=r"unmatched names.*s001.*zzz"):
        build_dataset("paired", tmp_path / "m")

    _write_split(tmp_path / "u", "ir", "vi", None, n=2)
    (tmp_path / "u" / "ir" / "s001.png").write_bytes(b"not an image")
    ds = build_dataset("paired", tmp_path / "u")
    with pytest.raises(ValueError, match=r"unreadable image: .*s001.png"):
        ds[1]

    _write_split(tmp_path / "s", "ir", "vi", "label", n=2)
    cv2.imwrite(str(tmp_path / "s" / "vi" / "s000.png"), np.zeros((H, W + 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "s" / "label" / "s001.png"), np.zeros((H + 2, W), np.uint8))
    ds = build_dataset("paired", tmp_path / "s", num_classes=3)
    with pytest.raises(ValueError, match=r"size mismatch for 's000': IR 64x48 .* VIS 68x48"):
        ds[0]
    with pytest.raises(ValueError, match=r"size mismatch for 's001': label 64x50"):
        ds[1]

    _write_split(tmp_path / "l", "ir", "vi", "label", n=1)
    lab = np.zeros((H, W), np.uint8)
    lab[0, 0], lab[1, 1] = 255, 7  # 255 = ignore is fine, 7 is not a class of a 3-class set
    cv2.imwrite(str(tmp_path / "l" / "label" / "s000.png"), lab)
    with pytest.raises(ValueError, match=r"label value 7 outside .*s000.png"):
        build_dataset("paired", tmp_path / "l", num_classes=3)[0]
    lab[1, 1] = 2
    cv2.imwrite(str(tmp_path / "l" / "label" / "s000.png"), lab)
    assert int(build_dataset("paired", tmp_path / "l", num_classes=3)[0]["label"][0, 0]) == 255

    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    with pytest.raises(ValueError, match="cannot detect the dataset layout"):
        build_dataset("auto", tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        list_records("kitti", tmp_path / "m")
    with pytest.raises(ValueError, match="empty dataset"):
        PairDataset([])


def test_real_msrs_and_roadscene(shared_data: Path) -> None:
    """All 247 MSRS test pairs carry their real 9-class labels (msrs/label); RoadScene has none."""
    recs = list_records("auto", shared_data / "msrs")
    assert len(recs) == 247 and all(r.label is not None for r in recs)
    train, val = holdout_split(recs, 10, "train"), holdout_split(recs, 10, "val")
    assert len(val) == 24 and len(train) + len(val) == 247 and not {r.name for r in train} & {r.name for r in val}
    aug = AugmentConfig(resize=[120, 160], crop=[96, 128], scale=[0.8, 1.2])
    s = PairDataset(train[:1], train=True, augment=aug)[0]
    _check_sample(s, 96, 128, labelled=True, num_classes=9)
    full = PairDataset(recs[:8])  # unaugmented, full size: the real classes are there, none outside 0..8
    seen = set().union(*(full[i]["label"].unique().tolist() for i in range(len(full))))
    assert seen <= set(range(9)) and seen - {0}, seen
    ds = build_dataset("auto", shared_data / "roadscene", train=True, augment=AugmentConfig(crop=[256, 320]))
    _check_sample(ds[0], 256, 320, labelled=False)  # smaller images are scaled up to cover the crop


def test_cutmix_pastes_one_box_in_every_modality_and_label() -> None:
    b, h, w = 4, 24, 32
    ir = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, h, w).clone()
    vis = ir.expand(b, 3, h, w).clone() + 10
    label = ir[:, 0].long() + 1
    has = torch.tensor([True, True, False, True])
    g = torch.Generator().manual_seed(3)
    mir, mvis, mlab, mhas = cutmix(ir, vis, label, has, 1.0, g)
    for i in range(b):
        j = (i + 1) % b
        box = mir[i, 0] == j
        area = box.float().mean()
        assert 0.25 ** 2 - 1e-6 <= area <= 0.75 ** 2 + 1e-6  # a quarter to three quarters of each side
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
        assert torch.equal(mvis[i] == j + 10, box.expand(3, h, w)) and torch.equal(mlab[i] == j + 1, box)
        assert bool(mhas[i]) == bool(has[i] and has[j])  # labelled only if both sources were
    assert torch.equal(cutmix(ir, vis, label, has, 0.0, g)[0], ir)  # off: unchanged
    # replayable from the generator's seed
    again = cutmix(ir, vis, label, has, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], mir)
