"""Box labels: YOLO / COCO / VOC readers and their errors, the YOLO writer, box scores, `mafs eval --boxes`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from mafs_core.boxes import (
    MSRS_BOX_CLASSES,
    Box,
    BoxFormatError,
    BoxScores,
    BoxSource,
    box_iou,
    box_masks,
    component_boxes,
    detect_format,
    draw_boxes,
    greedy_matches,
    parse_class_map,
    read_coco,
    read_voc,
    read_yolo,
    write_yolo,
)
from mafs_core.classes import MSRS_CLASSES, MSRS_PALETTE
from mafs_core.cli import main as mafs_main

CAR, PERSON, BIKE = 1, 2, 3
MAP = parse_class_map(MSRS_BOX_CLASSES, MSRS_CLASSES)


# ---------------------------------------------------------------------------- class maps

def test_parse_class_map_resolves_names_ids_and_drops():
    assert MAP == {"0": PERSON, "1": BIKE, "2": CAR}
    assert parse_class_map("person:person, bicycle:bike ,truck:-,dog:8", MSRS_CLASSES) == \
        {"person": PERSON, "bicycle": BIKE, "truck": None, "dog": 8}
    assert parse_class_map(None, MSRS_CLASSES) == {}
    with pytest.raises(ValueError, match="dog"):
        parse_class_map("0:dog", MSRS_CLASSES)
    with pytest.raises(ValueError, match="FILE_CLASS:MODEL_CLASS"):
        parse_class_map("0person", MSRS_CLASSES)
    with pytest.raises(ValueError, match="twice"):
        parse_class_map("0:person,0:car", MSRS_CLASSES)


# ---------------------------------------------------------------------------- YOLO

def test_read_yolo_denormalises_to_pixels(tmp_path: Path):
    f = tmp_path / "a.txt"
    # MSRS files have double spaces, trailing blanks and no final newline; a comment and a blank line too.
    f.write_text("0  0.5 0.25  0.2 0.5  \n\n# note\n2 0.1 0.9 0.2 0.2")
    boxes = read_yolo(f, (200, 100), MAP)  # h = 200, w = 100
    assert boxes == [Box(PERSON, 40.0, 0.0, 60.0, 100.0), Box(CAR, 0.0, pytest.approx(160.0), 20.0, 200.0)]
    assert read_yolo(tmp_path / "a.txt", (200, 100), {"0": None, "2": CAR}) == boxes[1:]  # '-' drops person
    (tmp_path / "empty.txt").write_text("")
    assert read_yolo(tmp_path / "empty.txt", (200, 100), MAP) == []


@pytest.mark.parametrize(("line", "match"), [
    ("0 0.5 0.5 0.2", "expected 5 values"),
    ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 values"),
    ("0 0.5 abc 0.2 0.2", "not a number"),
    ("person 0.5 0.5 0.2 0.2", "not an integer"),
    ("0 1.2 0.5 0.2 0.2", r"cx=1\.2"),
    ("0 0.5 0.5 0 0.2", "must be > 0"),
    ("0 0.95 0.5 0.2 0.2", "outside the image"),
    ("7 0.5 0.5 0.2 0.2", "unknown class '7'"),
])
def test_read_yolo_errors_name_file_and_line(tmp_path: Path, line: str, match: str):
    f = tmp_path / "bad.txt"
    f.write_text(f"0 0.5 0.5 0.1 0.1\n\n{line}\n")
    with pytest.raises(BoxFormatError, match=match) as err:
        read_yolo(f, (480, 640), MAP)
    assert f"{f}:3:" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_read_yolo_tolerates_rounding_overshoot(tmp_path: Path):
    f = tmp_path / "edge.txt"
    f.write_text("0 0.1 0.5 0.2002 0.2\n")  # x0 = -1e-4: an exporter's rounding, clipped to 0
    (b,) = read_yolo(f, (100, 100), MAP)
    assert b.x0 == 0.0 and b.x1 == pytest.approx(20.01)


def test_write_read_yolo_round_trip(tmp_path: Path):
    boxes = [Box(PERSON, 10.0, 20.0, 50.0, 120.0), Box(CAR, 0.0, 0.0, 640.0, 480.0), Box(BIKE, 3.5, 7.25, 9.0, 9.5)]
    f = tmp_path / "out.txt"
    write_yolo(f, boxes, (480, 640), MAP)
    assert f.read_text().splitlines()[0] == "0 0.046875 0.145833 0.062500 0.208333"
    back = read_yolo(f, (480, 640), MAP)
    assert [b.cls for b in back] == [b.cls for b in boxes]
    for a, b in zip(back, boxes):
        assert (a.x0, a.y0, a.x1, a.y1) == pytest.approx((b.x0, b.y0, b.x1, b.y1), abs=1e-3)
    with pytest.raises(ValueError, match="no file class id"):
        write_yolo(f, [Box(5, 0, 0, 1, 1)], (480, 640), MAP)


def test_yolo_source_needs_a_class_map(tmp_path: Path):
    (tmp_path / "a.txt").write_text("")
    assert detect_format(tmp_path) == "yolo"
    with pytest.raises(ValueError, match="--box-classes 0:person,1:bike,2:car"):
        BoxSource(tmp_path, MSRS_CLASSES)
    src = BoxSource(tmp_path, MSRS_CLASSES, class_map=MSRS_BOX_CLASSES)
    assert src.boxes("a", (10, 10)) == [] and src.boxes("missing", (10, 10)) is None
    assert src.classes == [CAR, PERSON, BIKE]


# ---------------------------------------------------------------------------- COCO

def _coco(tmp_path: Path, anns: list[dict], **extra) -> Path:
    data = {"images": [{"id": 1, "file_name": "sub/00004N.png", "width": 640, "height": 480},
                       {"id": 2, "file_name": "00005D.png", "width": 640, "height": 480}],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 9, "name": "dog"}],
            "annotations": anns, **extra}
    f = tmp_path / "boxes.json"
    f.write_text(json.dumps(data))
    return f


def test_read_coco_by_name_and_by_map(tmp_path: Path):
    f = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40]},
                         {"id": 2, "image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5]},
                         {"id": 3, "image_id": 1, "category_id": 3, "bbox": [100, 100, 50, 20]}])
    by_name = read_coco(f, None, MSRS_CLASSES)  # 'dog' is no MSRS class: dropped
    assert by_name == {"00004N": [Box(PERSON, 10, 20, 40, 60), Box(CAR, 100, 100, 150, 120)], "00005D": []}
    by_map = read_coco(f, parse_class_map("person:person,3:car,dog:-", MSRS_CLASSES), MSRS_CLASSES)
    assert by_map == by_name
    with pytest.raises(BoxFormatError, match=r"annotation 1 .*unknown class 'dog'"):
        read_coco(f, parse_class_map("person:person,car:car", MSRS_CLASSES), MSRS_CLASSES)
    src = BoxSource(f, MSRS_CLASSES)
    assert src.format == "coco" and src.classes == [CAR, PERSON] and src.boxes("00009N", (480, 640)) is None


@pytest.mark.parametrize(("ann", "match"), [
    ({"id": 7, "image_id": 1, "category_id": 1, "bbox": [600, 20, 60, 40]}, "outside the 640x480 image"),
    ({"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 20, 0, 40]}, "empty box"),
    ({"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 20, 40]}, "bbox"),
    ({"id": 7, "image_id": 5, "category_id": 1, "bbox": [10, 20, 4, 4]}, "image_id"),
    ({"id": 7, "image_id": 1, "category_id": 42, "bbox": [10, 20, 4, 4]}, "unknown category_id 42"),
])
def test_read_coco_errors_name_the_annotation(tmp_path: Path, ann: dict, match: str):
    f = _coco(tmp_path, [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]}, ann])
    with pytest.raises(BoxFormatError, match=match) as err:
        read_coco(f, None, MSRS_CLASSES)
    assert f"{f}: annotation 1 (id 7)" in str(err.value)


def test_read_coco_broken_json_names_line(tmp_path: Path):
    f = tmp_path / "b.json"
    f.write_text('{"images": [],\n "categories": [\n oops]}')
    with pytest.raises(BoxFormatError, match=re.escape(f"{f}:3: broken json")):
        read_coco(f, None, MSRS_CLASSES)
    f.write_text('{"annotations": []}')
    with pytest.raises(BoxFormatError, match="not a COCO detection file"):
        read_coco(f, None, MSRS_CLASSES)
    f.write_text('{"images": [], "categories": [{"id": 1, "name": "dog"}]}')
    with pytest.raises(BoxFormatError, match="give a class map"):
        read_coco(f, None, MSRS_CLASSES)


# ---------------------------------------------------------------------------- VOC

def _voc(objects: str, size: str = "<size><width>640</width><height>480</height><depth>3</depth></size>") -> str:
    return f"<annotation><filename>x.png</filename>{size}{objects}</annotation>"


def _obj(name: str, x0: str, y0: str, x1: str, y1: str) -> str:
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def test_read_voc_is_one_based_inclusive(tmp_path: Path):
    f = tmp_path / "00004N.xml"
    f.write_text(_voc(_obj("person", "11", "21", "40", "60") + _obj("bicycle", "1", "1", "640", "480")))
    assert read_voc(f, parse_class_map("person:person,bicycle:bike", MSRS_CLASSES), MSRS_CLASSES) == \
        [Box(PERSON, 10, 20, 40, 60), Box(BIKE, 0, 0, 640, 480)]
    with pytest.raises(BoxFormatError, match=r"object 2: unknown class 'bicycle'"):
        read_voc(f, None, MSRS_CLASSES)  # by name: bicycle is no MSRS class
    with pytest.raises(BoxFormatError, match="object 2"):
        BoxSource(tmp_path, MSRS_CLASSES)  # a name-matched source scans its files up front
    f.write_text(_voc(_obj("person", "11", "21", "900", "60"), size="<size><width>0</width><height>0</height></size>"))
    assert read_voc(f, None, MSRS_CLASSES) == [Box(PERSON, 10, 20, 900, 60)]  # a 0 x 0 size: not checked
    f.write_text(_voc(_obj("person", "11", "21", "40", "60") + _obj("bicycle", "1", "1", "640", "480")))
    src = BoxSource(tmp_path, MSRS_CLASSES, class_map="person:person,bicycle:bike")
    assert src.format == "voc" and src.boxes("00004N", (480, 640))[0] == Box(PERSON, 10, 20, 40, 60)


@pytest.mark.parametrize(("xml", "match"), [
    (_voc(_obj("person", "11", "21", "4x0", "60")), "object 1 .*numbers"),
    (_voc(_obj("person", "11", "21", "700", "60")), "outside the 640x480 image"),
    (_voc(_obj("person", "50", "21", "40", "60")), "empty box"),
    (_voc("<object><name>person</name></object>"), "object 1 .*bndbox"),
])
def test_read_voc_errors(tmp_path: Path, xml: str, match: str):
    f = tmp_path / "a.xml"
    f.write_text(xml)
    with pytest.raises(BoxFormatError, match=match) as err:
        read_voc(f, None, MSRS_CLASSES)
    assert str(f) in str(err.value)


def test_read_voc_broken_xml_names_line(tmp_path: Path):
    f = tmp_path / "a.xml"
    f.write_text("<annotation>\n<object>\n<name>person</nam>\n</annotation>")
    with pytest.raises(BoxFormatError, match=re.escape(f"{f}:3: broken xml")):
        read_voc(f, None, MSRS_CLASSES)


def test_detect_format(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nope")
    (tmp_path / "a.xml").write_text(_voc(""))
    assert detect_format(tmp_path) == "voc"
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(ValueError, match="--box-format"):
        detect_format(tmp_path)
    with pytest.raises(ValueError, match="box format must be"):
        BoxSource(tmp_path, MSRS_CLASSES, fmt="kitti")


# ---------------------------------------------------------------------------- the real sample boxes

def test_sample_boxes_agree_with_the_sample_masks(sample_data: Path):
    """The committed MSRS boxes and masks describe the same objects (measured: 32 of 37 person boxes hold
    >= 10 % person pixels; 95 % of labelled person pixels lie in person boxes)."""
    root = sample_data / "msrs"
    src = BoxSource(root / "boxes", MSRS_CLASSES, class_map=MSRS_BOX_CLASSES)
    scores = BoxScores(src.classes, MSRS_CLASSES)
    person_cover = []
    for f in sorted((root / "label").glob("*.png")):
        label = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        boxes = src.boxes(f.stem, label.shape)
        assert boxes is not None, f.stem
        scores.update(label, boxes)
        for b in boxes:
            if b.cls == PERSON:
                x0, y0, x1, y1 = b.pixel_bounds(*label.shape)
                person_cover.append((label[y0:y1, x0:x1] == PERSON).mean())
    assert len(person_cover) >= 30
    assert np.mean(np.array(person_cover) >= 0.1) >= 0.75
    rep = scores.to_dict()
    assert rep["num_images"] == 13
    assert rep["per_class"]["person"]["pixels_in_boxes"] >= 0.85
    assert rep["per_class"]["car"]["boxes_found"] >= 0.8
    # A mask of one wrong class finds nothing: the scores separate a good mask from a bad one.
    wrong = BoxScores(src.classes, MSRS_CLASSES)
    for f in sorted((root / "label").glob("*.png")):
        label = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        wrong.update(np.full_like(label, 4), src.boxes(f.stem, label.shape))
    assert wrong.to_dict()["mean"]["boxes_found"] == 0.0


# ---------------------------------------------------------------------------- box scores by hand

def test_pixel_bounds_round_to_pixel_centres_and_clip():
    assert Box(1, 0.4, 0.6, 3.5, 2.49).pixel_bounds(10, 10) == (0, 1, 4, 2)
    assert Box(1, 5.2, 5.2, 5.3, 5.3).pixel_bounds(10, 10) == (5, 5, 6, 6)  # thin: still one pixel
    assert Box(1, -3, -3, 20, 20).pixel_bounds(8, 6) == (0, 0, 6, 8)


def test_boxes_found_and_pixels_in_boxes_by_hand():
    # Two person boxes of 10x10 px; the mask covers the first fully and 20 px outside any box.
    boxes = [Box(PERSON, 0, 0, 10, 10), Box(PERSON, 20, 0, 30, 10)]
    mask = np.zeros((20, 40), np.uint8)
    mask[0:10, 0:10] = PERSON
    mask[15:17, 30:40] = PERSON  # 20 px outside, 2 rows: one component of 20 px
    mask[0:2, 20:25] = PERSON  # 10 px of box 2: 10 % < 30 % -> not found
    s = BoxScores([CAR, PERSON], MSRS_CLASSES, min_cover=0.3, min_area=16)
    s.update(mask, boxes)
    r = s.to_dict()["per_class"]["person"]
    assert (r["boxes"], r["found"], r["pred_pixels"], r["pred_in_boxes"]) == (2, 1, 130, 110)
    assert r["boxes_found"] == 0.5 and r["pixels_in_boxes"] == pytest.approx(110 / 130)
    assert r["box_f"] == pytest.approx(2 * 0.5 * (110 / 130) / (0.5 + 110 / 130))
    # Components >= 16 px: box 1 (IoU 1, TP) and the 20 px strip (FP); the 10 px patch is too small. FN = 1.
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1) and r["cc_f1"] == pytest.approx(2 / 4)
    car = s.to_dict()["per_class"]["car"]
    assert car["boxes"] == 0 and car["boxes_found"] is None and car["pixels_in_boxes"] is None
    assert s.to_dict()["mean"]["boxes_found"] == 0.5  # classes without boxes stay out of the mean
    # With min_cover 0.1 the second box counts as found.
    s2 = BoxScores([PERSON], MSRS_CLASSES, min_cover=0.1)
    s2.update(mask, boxes)
    assert s2.to_dict()["per_class"]["person"]["boxes_found"] == 1.0


def test_scores_are_pooled_over_frames_not_averaged():
    s = BoxScores([PERSON], MSRS_CLASSES)
    big = np.zeros((10, 10), np.uint8)
    big[:, :] = PERSON  # frame 1: 100 px, all inside its box
    s.update(big, [Box(PERSON, 0, 0, 10, 10)])
    small = np.zeros((10, 10), np.uint8)
    small[0, 0] = PERSON  # frame 2: 1 px, outside its box
    s.update(small, [Box(PERSON, 5, 5, 10, 10)])
    r = s.to_dict()["per_class"]["person"]
    assert r["pixels_in_boxes"] == pytest.approx(100 / 101)  # a mean of per-frame ratios would be 0.5
    assert r["boxes_found"] == 0.5 and s.num_images == 2


def test_component_matching_is_one_to_one_at_iou_half():
    mask = np.zeros((30, 60), bool)
    mask[0:10, 0:10] = True  # component A
    mask[0:10, 40:60] = True  # component B: 20 wide
    assert component_boxes(mask, 16) == [(0, 0, 10, 10), (40, 0, 60, 10)]
    diag = np.zeros((10, 10), bool)
    diag[np.arange(10), np.arange(10)] = True
    assert component_boxes(diag, 5) == [(0, 0, 10, 10)]  # 8-connectivity joins the diagonal
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [40, 0, 50, 10]])  # two GT on A, one covering half of B
    iou = box_iou(np.array(component_boxes(mask, 16)), gt)
    assert iou[1, 2] == pytest.approx(0.5)
    assert greedy_matches(iou, 0.5) == 2  # A once (not twice), B at exactly 0.5
    assert greedy_matches(iou, 0.51) == 1
    assert greedy_matches(np.zeros((0, 3)), 0.5) == 0


def test_box_masks_and_draw_boxes():
    m = box_masks([Box(PERSON, 1, 1, 3, 4), Box(CAR, 0, 0, 1, 1)], (5, 5), 9)
    assert m.shape == (9, 5, 5) and m[PERSON].sum() == 6 and m[CAR].sum() == 1 and m[BIKE].sum() == 0
    img = np.zeros((20, 20), np.uint8)
    out = draw_boxes(img, [Box(PERSON, 2, 2, 10, 10)], np.array(MSRS_PALETTE, np.uint8), scale=1.0)
    assert out.shape == (20, 20, 3) and img.sum() == 0
    assert tuple(out[2, 5]) == (0, 255, 255)  # person (64, 64, 0) RGB at full brightness, as BGR
    assert out[5, 5].sum() == 0  # outline only


# ---------------------------------------------------------------------------- mafs eval --boxes

@pytest.mark.timeout(240)
def test_mafs_eval_with_boxes_writes_the_box_section(tmp_path: Path, sample_data: Path):
    root = sample_data / "msrs"
    out = tmp_path / "eval"
    rc = mafs_main(["eval", "--ir", str(root / "ir"), "--vis", str(root / "vi"), "--labels", str(root / "label"),
                    "--boxes", str(root / "boxes"), "--box-classes", MSRS_BOX_CLASSES, "--out", str(out),
                    "--random-init", "mafs_t", "--device", "cpu", "--warmup", "0", "--limit", "3", "--save-fused"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    boxes = rep["boxes"]
    assert boxes["num_images"] == 3 and boxes["format"] == "yolo"
    assert set(boxes["per_class"]) == {"car", "person", "bike"}
    # The same numbers from the saved masks and the box files directly.
    src = BoxSource(root / "boxes", MSRS_CLASSES, class_map=MSRS_BOX_CLASSES)
    direct = BoxScores(src.classes, MSRS_CLASSES)
    for name in [r["name"] for r in rep["per_image"]]:
        mask = cv2.imread(str(out / "mask" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        direct.update(mask, src.boxes(name, mask.shape))
    assert boxes["per_class"] == direct.to_dict()["per_class"]
    md = (out / "report.md").read_text()
    assert "## Box labels" in md and "| person |" in md and "boxes found" in md
    # Bad class maps and formats fail before any work, with rc 2.
    for extra in (["--box-classes", "0:dog"], ["--box-format", "voc", "--box-classes", MSRS_BOX_CLASSES], []):
        assert mafs_main(["eval", "--ir", str(root / "ir"), "--vis", str(root / "vi"), "--boxes",
                          str(root / "boxes"), *extra, "--out", str(tmp_path / "x"), "--random-init", "mafs_t",
                          "--device", "cpu", "--warmup", "0", "--limit", "1"]) == 2, extra


@pytest.mark.timeout(240)
def test_mafs_eval_skips_a_frame_with_a_broken_box_file(tmp_path: Path, sample_data: Path):
    from mafs_core.io import list_pairs

    root = sample_data / "msrs"
    names = [p.name for p in list_pairs(root / "ir", root / "vi")][:3]
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    (boxes / f"{names[0]}.txt").write_text((root / "boxes" / f"{names[0]}.txt").read_text())
    (boxes / f"{names[1]}.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n")  # names[2]: no file at all
    out = tmp_path / "eval"
    rc = mafs_main(["eval", "--ir", str(root / "ir"), "--vis", str(root / "vi"), "--boxes", str(boxes),
                    "--box-classes", MSRS_BOX_CLASSES, "--out", str(out), "--random-init", "mafs_t",
                    "--device", "cpu", "--warmup", "0", "--limit", "3"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["num_images"] == 2 and rep["boxes"]["num_images"] == 1
    (skipped,) = rep["skipped"]
    assert skipped["name"] == names[1] and f"{names[1]}.txt:2:" in skipped["reason"]
    assert rep["warnings"]["pairs_without_boxes"] == 1


def test_evaluator_scores_boxes_the_same_with_a_thread_pool():
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from mafs_core.evaluate import Evaluator

    rng = np.random.default_rng(0)
    frames = []
    for i in range(4):
        vis = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        ir = rng.integers(0, 256, (48, 64), dtype=np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        mask[10:30, 5 + i:25 + i] = PERSON
        res = SimpleNamespace(fused_bgr=vis, mask=mask, overlay=None, timings={})
        boxes = None if i == 3 else [Box(PERSON, 5, 10, 25, 30), Box(CAR, 40, 0, 60, 20)]
        frames.append((f"{i:05d}D", ir, vis, res, None, boxes))
    serial = Evaluator(MSRS_CLASSES, metrics=(), box_classes=[CAR, PERSON])
    serial.add_many(frames)
    pooled = Evaluator(MSRS_CLASSES, metrics=(), box_classes=[CAR, PERSON])
    with ThreadPoolExecutor(2) as pool:
        pooled.add_many(frames, pool)
    a, b = serial.report()["boxes"], pooled.report()["boxes"]
    assert a == b and a["num_images"] == 3  # the frame without box labels is not scored
    assert a["per_class"]["person"]["boxes_found"] == 1.0 and a["per_class"]["car"]["boxes_found"] == 0.0
    assert a["per_class"]["person"]["pred_pixels"] == 3 * 400 and a["per_class"]["person"]["tp"] == 3
    assert "boxes" not in Evaluator(MSRS_CLASSES, metrics=()).report()  # no box classes: no section
