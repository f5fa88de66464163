"""The committed sample data (data/samples): small, complete, and real enough that a bare clone can test on it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from mafs_core.datasets import build_dataset
from mafs_core.io import list_pairs

MAX_PAIRS = 16
MAX_BYTES = 8_000_000  # 8 MB in all, README included: the repository must stay light to clone
LAYOUT = {"msrs": ("ir", "vi", "label", "boxes"), "roadscene": ("ir", "vi"), "msrs_misaligned": ("ir", "vi", "ir_warp")}


def _stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.iterdir() if p.is_file()}


def test_small_and_complete(sample_data: Path) -> None:
    """Every pair has all its files (same stem in each folder) and the whole folder stays within its limits."""
    total_pairs = 0
    for ds, subs in LAYOUT.items():
        names = _stems(sample_data / ds / subs[0])
        assert names, f"no {ds} samples"
        for sub in subs[1:]:
            assert _stems(sample_data / ds / sub) == names, f"{ds}/{sub} does not match {ds}/{subs[0]}"
        total_pairs += len(names)
    assert sorted(p.name for p in sample_data.iterdir()) == sorted([*LAYOUT, "README.md"])
    assert total_pairs <= MAX_PAIRS
    size = sum(p.stat().st_size for p in sample_data.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"data/samples is {size / 1e6:.1f} MB"
    readme = (sample_data / "README.md").read_text()
    for name in _stems(sample_data / "msrs" / "ir") | _stems(sample_data / "roadscene" / "ir"):
        assert name in readme, f"{name} is not listed in data/samples/README.md"


def test_msrs_samples_cover_day_night_and_every_class(sample_data: Path) -> None:
    """Labels are the real 9-class mono8 maps; together the frames show every class 1..8, by day and by night."""
    seen: set[int] = set()
    labels = sorted((sample_data / "msrs" / "label").iterdir())
    for path in labels:
        lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        ir = cv2.imread(str(sample_data / "msrs" / "ir" / path.name), cv2.IMREAD_UNCHANGED)
        assert lab is not None and lab.dtype == np.uint8 and lab.ndim == 2 and lab.shape == ir.shape == (480, 640)
        values = set(np.unique(lab).tolist())
        assert values <= set(range(9)), f"{path.name}: {values}"
        seen |= values
    assert set(range(1, 9)) <= seen, f"classes missing from the samples: {sorted(set(range(1, 9)) - seen)}"
    stems = [p.stem for p in labels]
    assert any(s.endswith("D") for s in stems) and any(s.endswith("N") for s in stems)


def test_boxes_are_yolo(sample_data: Path) -> None:
    """`cls cx cy w h` per line, cls 0 person / 1 bicycle / 2 car, normalised coordinates; empty file = no objects."""
    classes: set[int] = set()
    for path in sorted((sample_data / "msrs" / "boxes").glob("*.txt")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            fields = line.split()
            assert len(fields) == 5, f"{path.name}: {line!r}"
            cls, coords = int(fields[0]), [float(v) for v in fields[1:]]
            assert cls in {0, 1, 2}, f"{path.name}: class {cls}"
            assert all(0.0 <= v <= 1.0 for v in coords), f"{path.name}: {line!r}"
            classes.add(cls)
    assert classes == {0, 1, 2}


def test_loaders_read_the_samples(sample_data: Path) -> None:
    """The dataset and pair readers take the samples as they are: MSRS labelled, RoadScene not."""
    msrs = build_dataset("auto", sample_data / "msrs", num_classes=9)
    assert len(msrs) == len(list((sample_data / "msrs" / "ir").iterdir())) and bool(msrs[0]["has_label"])
    road = build_dataset("auto", sample_data / "roadscene")
    assert len(road) == 2 and not bool(road[0]["has_label"])
    mis = sample_data / "msrs_misaligned"
    (pair,) = list_pairs(mis / "ir", mis / "vi", strict=True)
    warp = cv2.imread(str(mis / "ir_warp" / pair.ir.name), cv2.IMREAD_GRAYSCALE)
    ir = cv2.imread(str(pair.ir), cv2.IMREAD_GRAYSCALE)
    assert warp.shape == ir.shape and not np.array_equal(warp, ir)


def test_not_git_ignored(sample_data: Path) -> None:
    """.gitignore must let data/samples in (checked where this is a git checkout with git installed)."""
    repo = sample_data.parent.parent
    files = [str(p.relative_to(repo)) for p in sample_data.rglob("*") if p.is_file()]
    try:
        r = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=repo, capture_output=True, text=True,
                           timeout=30)
    except FileNotFoundError:
        pytest.skip("git not installed")
    if r.returncode == 128:  # not a git work tree (an unpacked archive): nothing can ignore the files
        return
    assert r.returncode == 1 and not r.stdout.strip(), f"ignored by .gitignore: {r.stdout.split()[:5]}"


def test_demo_falls_back_to_the_samples(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without --data, $MAFS_DATA or ../shared/data/msrs the demo takes data/samples/msrs, and says so."""
    from mafs_ros import demo

    monkeypatch.delenv("MAFS_DATA", raising=False)
    monkeypatch.setattr(demo, "SHARED_MSRS", tmp_path / "nothing")
    data, why = demo.choose_data()
    assert data == demo.SAMPLE_MSRS and "data/samples" in why and (data / "ir").is_dir()
    monkeypatch.setenv("MAFS_DATA", str(tmp_path))
    assert demo.choose_data() == (tmp_path, "from $MAFS_DATA")
    assert demo.choose_data("x") == (Path("x"), "from --data")
    names = demo.pick_frames(data / "ir", 40)  # fewer pairs than asked: all of them, day and night
    assert names == sorted(p.stem for p in (data / "ir").iterdir())
