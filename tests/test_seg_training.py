"""Segmentation from real labels: the committed validation split, rare-class sampling and crops, class-weighted
OHEM, validation through the inference engine, and the shipped weights chosen per device."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mafs_core.datasets import (
    AugmentConfig,
    PairDataset,
    Record,
    _class_crop,
    holdout_split,
    list_records,
    read_names,
    repeat_factors,
)
from mafs_core.losses import class_weights, ohem_ce

REPO = Path(__file__).resolve().parent.parent
VAL_SPLIT = REPO / "data" / "splits" / "msrs_val.txt"


def _recs(names: list[str]) -> list[Record]:
    return [Record(n, Path(f"{n}.png"), Path(f"{n}.png")) for n in names]


def test_names_file_holds_out_exactly_its_names(tmp_path: Path) -> None:
    f = tmp_path / "val.txt"
    f.write_text("# comment\nb\n\n c.png  # trailing comment\n")
    names = read_names(f)
    assert names == {"b", "c"}
    recs = _recs(["a.png", "b.png", "c.png", "d.png"])
    train, val = holdout_split(recs, 0, "train", names), holdout_split(recs, 0, "val", names)
    assert [r.name for r in val] == ["b.png", "c.png"] and [r.name for r in train] == ["a.png", "d.png"]
    assert len(holdout_split(recs, 0, "all", names)) == 4
    with pytest.raises(FileNotFoundError, match="split file not found"):
        read_names(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no names"):
        read_names(tmp_path / "empty.txt")


def test_committed_validation_split(shared_data: Path) -> None:
    """Every 5th of the 247 labelled MSRS names, and every class is present in it (scores exist for all 9)."""
    names = read_names(VAL_SPLIT)
    recs = list_records("auto", shared_data / "msrs")
    stems = [Path(r.name).stem for r in recs]
    assert sorted(names) == stems[0::5] and len(names) == 50
    present = np.zeros(9, bool)
    for r in holdout_split(recs, 0, "val", names):
        present |= np.bincount(cv2.imread(str(r.label), cv2.IMREAD_UNCHANGED).ravel(), minlength=9)[:9] > 0
    assert present.all()
    train = holdout_split(recs, 0, "train", names)
    assert len(train) == 197 and not {r.name for r in train} & {r.name + "" for r in recs if Path(r.name).stem in names}


def _label_files(tmp_path: Path, labels: dict[str, np.ndarray]) -> list[Record]:
    recs = []
    for name, lab in labels.items():
        p = tmp_path / f"{name}.png"
        cv2.imwrite(str(p), lab.astype(np.uint8))
        recs.append(Record(p.name, p, p, p))
    return recs


def test_repeat_factors_repeat_rare_class_images(tmp_path: Path) -> None:
    common = np.zeros((8, 8), np.uint8)
    common[:2] = 1
    rare = common.copy()
    rare[5, 5] = 6
    recs = _label_files(tmp_path, {f"c{i}": common for i in range(15)} | {"rare": rare})
    recs.append(Record("nolabel", recs[0].ir, recs[0].vis, None))
    f = repeat_factors(recs, 9, 0.5)
    # class 1 is in every labelled image (f=1 -> 1x); class 6 in 1 of 16 -> sqrt(0.5 * 16) = 2.83 -> 3x
    assert f[:15] == [1] * 15 and f[15] == round(math.sqrt(0.5 * 16)) == 3 and f[16] == 1
    assert repeat_factors(recs, 9, 0.0) == [1] * 17


def test_class_crop_centres_on_a_present_class() -> None:
    label = np.zeros((100, 200), np.int64)
    label[90:92, 10:12] = 8  # a bump in the corner
    label[:, 150:] = 255  # ignored pixels are never a target
    rng = np.random.default_rng(0)
    for _ in range(20):
        y0, x0 = _class_crop(label, 32, 48, rng, 255, (0, 0))
        crop = label[y0:y0 + 32, x0:x0 + 48]
        assert crop.shape == (32, 48) and (crop == 8).any()
    assert _class_crop(np.zeros((10, 10), np.int64), 4, 4, rng, 255, (3, 2)) == (3, 2)  # background only


def test_class_crop_in_the_dataset(sample_data: Path) -> None:
    """With class_crop=1 every training crop of a labelled frame shows a foreground class."""
    recs = [r for r in list_records("auto", sample_data / "msrs") if r.name.startswith("00258D")]
    aug = AugmentConfig(crop=[64, 64], scale=[1.0, 1.0], hflip=False, class_crop=1.0)
    ds = PairDataset(recs * 8, train=True, augment=aug)
    for i in range(len(ds)):
        lab = ds[i]["label"]
        assert ((lab > 0) & (lab < 255)).any()


def test_class_weights_sqrt_inverse_frequency() -> None:
    counts = [9000, 900, 90, 9, 0]
    w = class_weights(counts, "sqrt_inv", max_ratio=10.0)
    f = torch.tensor(counts, dtype=torch.float32) / sum(counts)
    assert torch.isclose((w * f).sum(), torch.tensor(1.0), atol=1e-5)  # loss scale kept
    assert torch.isclose(w[1] / w[0], torch.tensor(math.sqrt(10.0)), rtol=1e-4)
    assert torch.isclose(w.max() / w.min(), torch.tensor(10.0), rtol=1e-4)  # capped, absent class included
    assert w[4] == w.max()
    assert torch.equal(class_weights(counts, "none"), torch.ones(5))
    assert torch.equal(class_weights([0] * 5, "sqrt_inv"), torch.ones(5))  # no labelled pixel: uniform, not inf
    with pytest.raises(ValueError, match="class weighting"):
        class_weights(counts, "inverse")


def test_weighted_ohem_equals_weighted_cross_entropy_when_every_pixel_is_kept() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 7, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 7), generator=g)
    target[0, 0, :3] = 255
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    got = ohem_ce(logits, target, thresh=1.0, min_kept=10_000, weight=w)
    want = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    assert torch.isclose(got, want, atol=1e-6)
    got.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # hard-pixel mining picks by unweighted CE: weights never change which pixels are kept
    few = ohem_ce(logits.detach(), target, thresh=1e-9, min_kept=5, weight=torch.ones(4))
    assert torch.isclose(few, ohem_ce(logits.detach(), target, thresh=1e-9, min_kept=5), atol=1e-6)


def test_validation_runs_the_engine_on_the_whole_split(sample_data: Path, tmp_path: Path) -> None:
    """val/miou is what the inference engine scores on every validation frame at full resolution, the number
    `mafs eval` gives on the same frames and weights."""
    import yaml

    from mafs_core.engine import FusionSegmenter
    from mafs_core.evaluate import Evaluator
    from mafs_core.io import read_ir, read_label, read_vis
    from mafs_core.train import Trainer, load_config

    split = tmp_path / "val.txt"
    split.write_text("00004N\n00258D\n00806N\n")
    cfg = {"data": {"root": str(sample_data), "sources": [{"root": "msrs", "holdout": str(split)}],
                    "augment": {"crop": [64, 96], "scale": [0.2, 0.3]}, "batch_size": 2, "num_workers": 0,
                    "val_max": 1, "val_metric_images": 0, "repeat_threshold": 0.5},
           "model": {"variant": "mafs_t"}, "loss": {"ohem_min_kept": 256, "class_weighting": "sqrt_inv"},
           "train": {"stage": "joint", "steps": 2, "out_dir": str(tmp_path / "run"), "progress": False,
                     "threads": 1, "val_every": 0, "ckpt_every": 0, "precise_bn_images": 0, "select": "miou"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_config(tmp_path / "c.yaml"))
    assert {Path(r.name).stem for r in trainer.train_ds.records}.isdisjoint({"00004N", "00258D", "00806N"})
    assert trainer.ce_weight is not None and trainer.ce_weight.shape == (9,)
    summary = trainer.fit()
    val = summary["val"]
    assert val["val/images"] == 3.0  # the whole split, though the loss pass saw val_max=1 frame
    engine = FusionSegmenter.from_checkpoint(tmp_path / "run" / "final.safetensors", device="cpu", warmup=0)
    ev = Evaluator(engine.class_names, engine.palette)
    for n in ("00004N", "00258D", "00806N"):
        ir, vis = read_ir(sample_data / "msrs" / "ir" / f"{n}.png"), read_vis(sample_data / "msrs" / "vi" / f"{n}.png")
        ev.add(n, ir, vis, engine.run(ir, vis), read_label(sample_data / "msrs" / "label" / f"{n}.png"))
    assert val["val/miou"] == pytest.approx(ev.report()["segmentation"]["miou"], abs=1e-9)
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_shipped_weights_per_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mafs_core import weights

    monkeypatch.setenv("MAFS_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "mafs_t.safetensors").write_bytes(b"t")
    path, why = weights.default_for_device("cuda")
    assert path.name == "mafs_t.safetensors" and "mafs_s.safetensors not installed" in why
    (tmp_path / "mafs_s.safetensors").write_bytes(b"s")
    assert weights.default_for_device("cuda")[0].name == "mafs_s.safetensors"
    assert weights.default_for_device("cuda:1")[0].name == "mafs_s.safetensors"
    path, why = weights.default_for_device("cpu")
    assert path.name == "mafs_t.safetensors" and why == "default weights for cpu"


def test_engine_loads_mafs_t_on_the_cpu_and_says_so() -> None:
    from mafs_core.engine import FusionSegmenter

    engine = FusionSegmenter.from_checkpoint(None, device="cpu", warmup=0)
    assert engine.variant == "mafs_t"
    assert engine.describe().endswith("mafs_t.safetensors (default weights for cpu)")
