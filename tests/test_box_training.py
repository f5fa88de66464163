"""Box supervision wired into training: boxes follow the image through resize, scale, crop and flip; collation;
a source's masks can be left out; the box terms run in the training step on frames with boxes and no mask."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from mafs_core.boxes import BoxSource
from mafs_core.classes import default_class_names
from mafs_core.datasets import AugmentConfig, PairDataset, collate, cutmix, list_records

MSRS_MAP = "0:person,1:bike,2:car"
PERSON = default_class_names(9).index("person")


def _fixture(root: Path, n: int = 6, h: int = 96, w: int = 128) -> Path:
    """Pairs whose label holds one person rectangle, and a YOLO file with exactly that box."""
    for sub in ("ir", "vi", "label", "boxes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        x0, y0, x1, y1 = 10 + 12 * i, 8 + 5 * i, 40 + 12 * i, 60 + 4 * i
        label = np.zeros((h, w), np.uint8)
        label[y0:y1, x0:x1] = PERSON
        cv2.imwrite(str(root / "ir" / f"f{i}.png"), (label * 40 + rng.integers(0, 30, (h, w))).astype(np.uint8))
        cv2.imwrite(str(root / "vi" / f"f{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "label" / f"f{i}.png"), label)
        cx, cy, bw, bh = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h
        (root / "boxes" / f"f{i}.txt").write_text(f"0 {cx} {cy} {bw} {bh}\n")
    return root


def _with_boxes(root: Path) -> list:
    import dataclasses

    src = BoxSource(root / "boxes", default_class_names(9), "yolo", MSRS_MAP)
    return [dataclasses.replace(r, box_source=src) for r in list_records("paired", root)]


def test_boxes_follow_the_geometric_augmentation(tmp_path: Path) -> None:
    root = _fixture(tmp_path / "d")
    aug = AugmentConfig(resize=[72, 96], crop=[48, 64], scale=[0.8, 1.6], hflip=True)
    ds = PairDataset(_with_boxes(root), train=True, augment=aug, seed=3, repeat=4)
    checked = flipped_or_cut = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s["has_boxes"] and s["label"].shape == (48, 64)
        ys, xs = np.nonzero(s["label"].numpy() == PERSON)
        if len(s["boxes"]) == 0:  # the crop left too little of the person to supervise
            assert len(ys) == 0 or min(np.ptp(ys), np.ptp(xs)) < 6
            continue
        (c, x0, y0, x1, y1), = s["boxes"].tolist()
        assert c == PERSON
        # the label's person pixels span the box: two nearest-neighbour resizes (0.75x, then up to 1.6x) move a
        # mask edge by up to a source pixel each, the box is exact
        assert abs(xs.min() - x0) <= 2.5 and abs(xs.max() + 1 - x1) <= 2.5
        assert abs(ys.min() - y0) <= 2.5 and abs(ys.max() + 1 - y1) <= 2.5
        checked += 1
        flipped_or_cut += x0 == 0 or y0 == 0 or x1 == 64 or y1 == 48
    assert checked >= 12 and flipped_or_cut >= 1


def test_collate_stacks_box_rows_with_their_frame_index(tmp_path: Path) -> None:
    root = _fixture(tmp_path / "d", n=3)
    recs = _with_boxes(root)
    ds = PairDataset([recs[0], list_records("paired", root)[1], recs[2]], augment=AugmentConfig())
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["has_boxes"].tolist() == [True, False, True]
    assert batch["boxes"].shape == (2, 6) and batch["boxes"][:, 0].tolist() == [0.0, 2.0]
    assert batch["ir"].shape == (3, 1, 96, 128) and batch["name"] == ["f0", "f1", "f2"]


def test_cutmix_leaves_frames_with_boxes_alone() -> None:
    g = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(4, 1, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
    label, has = torch.zeros(4, 16, 16, dtype=torch.long), torch.ones(4, dtype=torch.bool)
    keep = torch.tensor([True, False, True, False])
    mir, _, _, _ = cutmix(ir, vis, label, has, prob=1.0, generator=torch.Generator().manual_seed(1), keep=keep)
    assert torch.equal(mir[keep], ir[keep]) and not torch.equal(mir[~keep], ir[~keep])


def _config(tmp_path: Path, sample_data: Path, **loss) -> Path:
    cfg = {"data": {"root": str(sample_data),
                    "sources": [{"root": "msrs", "labels": False, "boxes": "msrs/boxes", "box_classes": MSRS_MAP}],
                    "augment": {"crop": [96, 128], "scale": [0.3, 0.4], "cutmix": 0.5}, "batch_size": 2,
                    "num_workers": 0, "val_max": 0},
           "model": {"variant": "mafs_t"}, "loss": {"ohem_min_kept": 256, **loss},
           "train": {"stage": "joint", "steps": 2, "out_dir": str(tmp_path / "run"), "progress": False,
                     "threads": 1, "val_every": 0, "ckpt_every": 0, "precise_bn_images": 0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "c.yaml"


def test_training_step_uses_the_boxes_of_unmasked_frames(sample_data: Path, tmp_path: Path) -> None:
    """The committed real MSRS samples with their real boxes and masks left out: the box terms are computed."""
    from mafs_core.train import Trainer, load_config

    trainer = Trainer(load_config(_config(tmp_path, sample_data, w_box_proj=1.0, w_box_pair=1.0, w_box_neg=0.5,
                                          class_weighting="sqrt_inv")))
    assert all(r.label is None and r.box_source is not None for r in trainer.train_ds.records)
    # no mask at all: the label-frequency class weights fall back to 1 (they were inf, and every loss NaN)
    assert torch.equal(trainer.ce_weight.cpu(), torch.ones(9))
    assert trainer.box_classes == sorted(default_class_names(9).index(c) for c in ("person", "bike", "car"))
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert {"box", "box_proj", "box_pair", "box_neg"} <= set(r)
        assert all(np.isfinite(r[k]) for k in ("box", "box_proj", "box_pair", "box_neg", "loss"))
        assert r["box_proj"] > 0 and r["box_neg"] > 0


def test_box_terms_off_by_default(sample_data: Path, tmp_path: Path) -> None:
    from mafs_core.train import Trainer, load_config

    trainer = Trainer(load_config(_config(tmp_path, sample_data)))
    assert trainer.box_weights == {} and trainer.box_classes == []
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert not any(k.startswith("box") for r in rows for k in r)


def test_a_non_finite_loss_stops_training_and_names_its_parts(sample_data: Path, tmp_path: Path) -> None:
    from mafs_core.train import Trainer, load_config

    trainer = Trainer(load_config(_config(tmp_path, sample_data, w_int=float("nan"))))
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 1 \(.*fusion=nan"):
        trainer.fit()
    assert not (tmp_path / "run" / "final.safetensors").exists()


def test_unknown_box_folder_fails_with_its_name(sample_data: Path, tmp_path: Path) -> None:
    from mafs_core.train import Trainer, load_config

    cfg = yaml.safe_load(_config(tmp_path, sample_data, w_box_proj=1.0).read_text())
    cfg["data"]["sources"][0]["boxes"] = "msrs/no_such_boxes"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(FileNotFoundError, match="no_such_boxes"):
        Trainer(load_config(tmp_path / "c.yaml"))


def test_teacher_pseudo_labels_corrected_by_the_boxes() -> None:
    """On a box frame the teacher's person is kept inside a person box and ignored outside every one; its other
    classes are kept outside the boxes and left to the box terms inside; frames without boxes are untouched."""
    from mafs_core.losses import IGNORE_INDEX
    from mafs_core.train import pseudo_with_boxes

    person, car = default_class_names(9).index("person"), default_class_names(9).index("car")
    pseudo = torch.zeros(2, 4, 6, dtype=torch.long)
    pseudo[:, :, 0:2] = person  # the teacher's person: inside the box (cols 0-1 of rows 0-1) and beyond it
    pseudo[:, 3, 5] = IGNORE_INDEX  # not confident
    mask = torch.zeros(2, 9, 4, 6)
    mask[:, person, 0:2, 0:3] = 1.0  # one person box: rows 0-1, cols 0-2
    boxed = torch.tensor([True, False])
    got = pseudo_with_boxes(pseudo, boxed, mask, [person, car])
    want = pseudo[0].clone()
    want[2:, 0:2] = IGNORE_INDEX  # person outside every person box
    want[0:2, 2] = IGNORE_INDEX  # background inside the box: left to the box terms
    assert torch.equal(got[0], want)
    assert torch.equal(got[1], pseudo[1])
    dropped = pseudo_with_boxes(pseudo, boxed, mask, [person, car], "drop")
    assert bool((dropped[0][pseudo[0] == person] == IGNORE_INDEX).all()) and torch.equal(dropped[1], pseudo[1])
