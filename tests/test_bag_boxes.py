"""Detection boxes with bags: `mafs bag export --boxes` writes them beside the exported frames (joined by name or
stamp), and `mafs bag eval --boxes` scores the mask against them exactly as `mafs eval --boxes` does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mafs_core.bag import RGB_TOPIC, MakeConfig, export_bag, make_bag
from mafs_core.bagio import BagReader
from mafs_core.boxes import MSRS_BOX_CLASSES, BoxSource
from mafs_core.classes import default_class_names
from mafs_core.cli import main as mafs

NAMES = ["00004N", "00081D", "00537D"]


@pytest.fixture(scope="module")
def real_bag(sample_data: Path, tmp_path_factory) -> Path:
    d = sample_data / "msrs"
    bag = tmp_path_factory.mktemp("bags") / "real"
    make_bag(d / "ir", d / "vi", bag, cfg=MakeConfig(rate=10), names=NAMES)
    return bag


def _source(path: Path) -> BoxSource:
    return BoxSource(path, default_class_names(9), "yolo", MSRS_BOX_CLASSES)


def test_export_writes_the_boxes_of_each_pair(real_bag: Path, sample_data: Path, tmp_path: Path) -> None:
    src = sample_data / "msrs" / "boxes"
    m = export_bag(real_bag, tmp_path / "out", boxes=src, box_classes=MSRS_BOX_CLASSES, progress=False)
    assert m["boxes"]["frames_with_boxes"] == 3 and m["boxes"]["errors"] == []
    assert m["boxes"]["box_classes"] == MSRS_BOX_CLASSES
    got, want = _source(tmp_path / "out" / "boxes"), _source(src)
    for row in m["frames"]:
        a, b = got.boxes(row["name"], (480, 640)), want.boxes(row["source"], (480, 640))
        assert row["boxes"] == len(b) > 0 and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x.cls == y.cls
            assert max(abs(p - q) for p, q in zip((x.x0, x.y0, x.x1, x.y1), (y.x0, y.y0, y.x1, y.y1))) < 1e-3 * 640


def test_export_joins_boxes_by_rgb_stamp_and_names_bad_files(real_bag: Path, sample_data: Path,
                                                             tmp_path: Path) -> None:
    with BagReader(real_bag) as r:
        stamps = [f.stamp_ns for f in r.frames([RGB_TOPIC])]
    by_stamp = tmp_path / "by_stamp"
    by_stamp.mkdir()
    for name, stamp in zip(NAMES[:2], stamps, strict=False):
        shutil.copy(sample_data / "msrs" / "boxes" / f"{name}.txt", by_stamp / f"{stamp}.txt")
    (by_stamp / f"{stamps[2]}.txt").write_text("0 0.5 0.5 0.1\n")  # 4 numbers: malformed
    m = export_bag(real_bag, tmp_path / "out", boxes=by_stamp, box_classes=MSRS_BOX_CLASSES, progress=False)
    assert m["pairs"] == 3  # the frame with the bad box file is kept
    assert [r["boxes"] is not None for r in m["frames"]] == [True, True, False]
    assert len(m["boxes"]["errors"]) == 1 and f"{stamps[2]}.txt" in m["boxes"]["errors"][0]


def test_export_cli_reports_the_boxes(real_bag: Path, sample_data: Path, tmp_path: Path, capsys) -> None:
    assert mafs(["bag", "export", str(real_bag), "--out", str(tmp_path / "o"), "--boxes",
                 str(sample_data / "msrs" / "boxes"), "--box-classes", MSRS_BOX_CLASSES]) == 0
    out = capsys.readouterr().out
    assert "boxes/" in out and f"box_classes '{MSRS_BOX_CLASSES}'" in out
    assert mafs(["bag", "export", str(real_bag), "--out", str(tmp_path / "p"), "--boxes",
                 str(sample_data / "msrs" / "boxes")]) == 2  # YOLO without a class map: refused, named
    assert "class map" in capsys.readouterr().out


@pytest.mark.timeout(180)
def test_bag_eval_box_scores_equal_mafs_eval(real_bag: Path, sample_data: Path, tmp_path: Path) -> None:
    d = sample_data / "msrs"
    folder = tmp_path / "f"
    for sub in ("ir", "vi", "boxes"):
        (folder / sub).mkdir(parents=True)
        for n in NAMES:
            ext = "txt" if sub == "boxes" else "png"
            shutil.copy(d / sub / f"{n}.{ext}", folder / sub / f"{n}.{ext}")
    common = ["--boxes", str(folder / "boxes"), "--box-classes", MSRS_BOX_CLASSES, "--device", "cpu"]
    assert mafs(["eval", "--ir", str(folder / "ir"), "--vis", str(folder / "vi"), "--out", str(tmp_path / "e"),
                 "--random-init", "mafs_t", "--warmup", "0", *common]) == 0
    assert mafs(["bag", "eval", str(real_bag), "--out", str(tmp_path / "b"), "--random-init", "mafs_t",
                 "--metrics", "", *common]) == 0
    a = json.loads((tmp_path / "e" / "report.json").read_text())["boxes"]
    b = json.loads((tmp_path / "b" / "report.json").read_text())["boxes"]
    assert a["per_class"] == b["per_class"] and a["per_class"]
