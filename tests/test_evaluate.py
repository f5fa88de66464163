"""Evaluator and `mafs eval`: report files, numbers equal to direct metric computations, label modes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from mafs_core.classes import MSRS_CLASSES
from mafs_core.cli import main as mafs_main
from mafs_core.evaluate import Evaluator, LabelMode, condition_of, ir_to_uint8, parse_label_mode
from mafs_core.metrics import FUSION_METRICS, ConfusionMatrix, baseline_fusions, fusion_metrics, to_gray

H, W = 64, 96


@dataclass
class StandIn:
    """The fields of engine.FusionResult the evaluator reads (no network needed for report logic)."""
    fused_bgr: np.ndarray
    mask: np.ndarray
    overlay: np.ndarray | None = None
    timings: dict = field(default_factory=lambda: {"total": 5.0})


def _frame(seed: int) -> tuple[np.ndarray, np.ndarray, StandIn, np.ndarray]:
    rng = np.random.default_rng(seed)
    ir = cv2.GaussianBlur(rng.integers(0, 256, (H, W)).astype(np.uint8), (5, 5), 1.0)
    vis = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3)).astype(np.uint8), (5, 5), 1.0)
    fused = np.maximum(vis, ir[..., None]) // 2 + vis // 4
    mask = rng.integers(0, 4, (H, W)).astype(np.uint8)
    label = mask.copy()
    label[: H // 4] = rng.integers(0, 4, (H // 4, W))  # a quarter disagrees
    label[-2:] = 255  # ignored
    return ir, vis, StandIn(fused, mask), label


def test_evaluator_report_equals_direct_computation(tmp_path: Path):
    ev = Evaluator(MSRS_CLASSES, baselines=True, num_samples=3)
    names = ["001D", "002D", "003D", "004D", "005N", "006N", "frame_7"]
    direct: dict[str, list[dict]] = {"model": [], "max": [], "mean": []}
    cm = ConfusionMatrix(len(MSRS_CLASSES))
    for i, name in enumerate(names):
        ir, vis, res, label = _frame(i)
        rec = ev.add(name, ir, vis, res, label)
        vy = to_gray(vis)
        direct["model"].append(fusion_metrics(ir, vy, to_gray(res.fused_bgr)))
        for k, f in baseline_fusions(ir, vy).items():
            direct[k].append(fusion_metrics(ir, vy, f))
        assert rec["model"] == direct["model"][-1]
        cm.update(res.mask, label)
    rep = ev.finish(tmp_path, {"checkpoint": "stand-in"})
    for f in ("report.json", "report.md", "iou.png", "samples.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["num_images"] == len(names) and on_disk["run"]["checkpoint"] == "stand-in"
    for method, rows in direct.items():
        for k in FUSION_METRICS:
            assert on_disk["fusion"][method][k] == pytest.approx(np.mean([r[k] for r in rows]), rel=1e-9)
    day = on_disk["fusion_by_condition"]["day"]
    assert day["num_images"] == 4
    assert day["fusion"]["model"]["SF"] == pytest.approx(np.mean([r["SF"] for r in direct["model"][:4]]))
    seg = on_disk["segmentation"]
    assert seg["miou"] == pytest.approx(cm.miou()) and seg["pixel_accuracy"] == pytest.approx(cm.pixel_accuracy())
    assert seg["iou"]["bike"] == pytest.approx(cm.iou()[3])
    assert seg["iou"]["bump"] is None  # absent class -> null, not NaN (valid JSON)
    assert seg["num_labelled"] == len(names)
    assert on_disk["timings_ms"]["total"]["median"] == 5.0
    assert len(on_disk["per_image"]) == len(names)
    # Samples: bounded per condition, and the grid interleaves day / night / other.
    assert [s.name for s in ev.samples()] == ["001D", "005N", "frame_7"]
    assert sum(len(v) for v in ev._samples.values()) <= 3 * 3
    md = (tmp_path / "report.md").read_text()
    assert "| model |" in md and "| max |" in md and "mIoU" in md
    assert rep["files"] == ["report.json", "report.md", "iou.png", "samples.png"]


def test_evaluator_binary_person_mode(tmp_path: Path):
    ev = Evaluator(MSRS_CLASSES, label_mode="binary:person")
    ir, vis, res, _ = _frame(0)
    res.mask[:] = 0
    res.mask[10:30, 10:30] = 2  # predicted person: 400 px
    res.mask[40:50, 40:50] = 1  # a car: not a person, not penalised against an unmarked car
    label = np.zeros((H, W), np.uint8)
    label[20:40, 10:30] = 255  # person: 400 px, overlap 200
    ev.add("00001D", ir, vis, res, label)
    rep = ev.finish(tmp_path)
    seg = rep["segmentation"]
    assert seg["label_mode"] == "binary:person"
    assert seg["class_names"] == ["not_person", "person"]
    assert seg["iou"]["person"] == pytest.approx(200 / 600)
    assert seg["headline"] == {"name": "person IoU", "value": pytest.approx(200 / 600)}
    assert (tmp_path / "iou.png").is_file()


def test_evaluator_without_labels_and_bad_labels(tmp_path: Path):
    ev = Evaluator(MSRS_CLASSES)
    ir, vis, res, _ = _frame(1)
    ev.add("x", ir, vis, res, np.zeros((H + 1, W), np.uint8))  # wrong shape: counted, not scored, no crash
    rep = ev.finish(tmp_path)
    assert "segmentation" not in rep and not (tmp_path / "iou.png").exists()
    assert rep["warnings"]["label_shape_mismatch"] == 1
    assert rep["predicted_class_fraction"]["unlabelled"] == pytest.approx(np.mean(res.mask == 0))
    assert (tmp_path / "samples.png").is_file()


def test_label_mode_parsing_and_helpers():
    assert parse_label_mode("multiclass", MSRS_CLASSES) == LabelMode()
    assert parse_label_mode("binary:person", MSRS_CLASSES) == LabelMode("binary", 2, "person")
    with pytest.raises(ValueError, match="not in"):
        parse_label_mode("binary:dog", MSRS_CLASSES)
    with pytest.raises(ValueError, match="multiclass"):
        parse_label_mode("binary", MSRS_CLASSES)
    assert condition_of("00004N") == "night" and condition_of("00055D") == "day" and condition_of("DN") is None
    ir16 = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    assert ir_to_uint8(ir16).tolist() == [[0, 64], [128, 255]]
    ir8 = np.array([[3, 4]], np.uint8)
    assert ir_to_uint8(ir8) is ir8


# ---------------------------------------------------------------------------- the CLI on real data

@pytest.mark.timeout(240)
def test_mafs_eval_cli_on_real_msrs_person_masks(tmp_path: Path, shared_data: Path):
    from mafs_core.io import list_pairs, read_ir, read_label, read_vis

    root = shared_data / "msrs_person_masks"
    out = tmp_path / "eval"
    rc = mafs_main(["eval", "--ir", str(root / "ir"), "--vis", str(root / "vi"), "--labels", str(root / "label"),
                    "--label-mode", "binary:person", "--out", str(out), "--random-init", "mafs_t",
                    "--device", "cpu", "--precision", "fp32", "--limit", "3", "--baselines", "--warmup", "0",
                    "--save-fused"])
    assert rc == 0
    for f in ("report.json", "report.md", "iou.png", "samples.png"):
        assert (out / f).stat().st_size > 0, f
    rep = json.loads((out / "report.json").read_text())
    assert rep["num_images"] == 3 and rep["run"]["variant"] == "mafs_t"

    # Recompute directly from the images and the saved (lossless) engine outputs, metric functions by hand.
    pairs = list_pairs(root / "ir", root / "vi", root / "label")[:3]
    model_rows, max_rows = [], []
    cm = ConfusionMatrix(2, ignore_index=None)
    for p in pairs:
        ir, vis, label = read_ir(p.ir), read_vis(p.vis), read_label(p.label)
        fused, mask = read_vis(out / "fused" / f"{p.name}.png"), read_label(out / "mask" / f"{p.name}.png")
        vy = to_gray(vis)
        model_rows.append(fusion_metrics(ir, vy, to_gray(fused)))
        max_rows.append(fusion_metrics(ir, vy, np.maximum(ir, vy)))
        cm.update(mask == 2, label == 255)
    for k in FUSION_METRICS:
        assert rep["fusion"]["max"][k] == pytest.approx(np.mean([r[k] for r in max_rows]), rel=1e-9), k
        assert rep["fusion"]["model"][k] == pytest.approx(np.mean([r[k] for r in model_rows]), rel=1e-9), k
    assert rep["segmentation"]["iou"]["person"] == pytest.approx(cm.iou()[1], rel=1e-9)
    assert rep["segmentation"]["pixel_accuracy"] == pytest.approx(cm.pixel_accuracy(), rel=1e-9)
    assert [r["name"] for r in rep["per_image"]] == [p.name for p in pairs]
    # Sanity of the bar itself on real data: pixel-max fusion keeps most source edges.
    assert 0.5 < rep["fusion"]["max"]["Qabf"] < 0.975


@pytest.mark.timeout(120)
def test_mafs_eval_cli_skips_unreadable_and_reports_errors(tmp_path: Path, capsys):
    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vi"
    ir_dir.mkdir()
    vis_dir.mkdir()
    for i in range(2):
        ir, vis, _, _ = _frame(i)
        cv2.imwrite(str(ir_dir / f"{i:05d}N.png"), ir)
        cv2.imwrite(str(vis_dir / f"{i:05d}N.png"), vis)
    (ir_dir / "00009D.png").write_bytes(b"not a png")
    cv2.imwrite(str(vis_dir / "00009D.png"), _frame(9)[1])
    out = tmp_path / "out"
    rc = mafs_main(["eval", "--ir", str(ir_dir), "--vis", str(vis_dir), "--out", str(out),
                    "--random-init", "mafs_t", "--device", "cpu", "--warmup", "0"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["num_images"] == 2
    assert [s["name"] for s in rep["skipped"]] == ["00009D"]
    assert "segmentation" not in rep and (out / "samples.png").is_file()

    rc = mafs_main(["eval", "--ir", str(ir_dir), "--vis", str(vis_dir), "--out", str(out),
                    "--checkpoint", str(tmp_path / "missing.safetensors"), "--device", "cpu"])
    assert rc == 2 and "error:" in capsys.readouterr().out
    rc = mafs_main(["eval", "--ir", str(ir_dir), "--vis", str(vis_dir), "--out", str(out),
                    "--random-init", "mafs_t", "--label-mode", "binary:dog", "--device", "cpu", "--warmup", "0"])
    assert rc == 2


def test_evaluator_with_no_fusion_metrics_still_scores_segmentation(tmp_path: Path):
    """`mafs bag eval --metrics ''` (speed runs): no fusion section, IoU and samples still written."""
    ev = Evaluator(MSRS_CLASSES, metrics=(), baselines=True)
    ir, vis, res, label = _frame(2)
    ev.add("00002N", ir, vis, res, label)
    rep = ev.finish(tmp_path)
    assert "fusion" not in rep and rep["segmentation"]["num_labelled"] == 1
    assert "Fusion metrics" not in (tmp_path / "report.md").read_text()


def test_evaluator_skips_bad_frames_without_partial_sums(tmp_path: Path):
    ev = Evaluator(MSRS_CLASSES, baselines=True)
    ir, vis, res, label = _frame(3)
    assert "skipped" in ev.add("small_fused", ir, vis, StandIn(res.fused_bgr[:-4], res.mask), label)
    assert "skipped" in ev.add("float_vis", ir, vis.astype(np.float32), res, label)
    assert "skipped" in ev.add("tiny", ir[:8, :8], vis[:8, :8], StandIn(res.fused_bgr[:8, :8], res.mask[:8, :8]))
    good = ev.add("good", ir, vis, res, label)
    rep = ev.finish(tmp_path)
    assert rep["num_images"] == 1 and [s["name"] for s in rep["skipped"]] == ["small_fused", "float_vis", "tiny"]
    assert rep["fusion"]["model"] == pytest.approx(good["model"])
    assert rep["segmentation"]["num_labelled"] == 1 and np.sum(rep["segmentation"]["confusion_matrix"]) > 0


def test_add_many_on_threads_gives_the_serial_report(tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    frames = []
    for i, name in enumerate(["001D", "002N", "003D", "bad", "005N", "006D"]):
        ir, vis, res, label = _frame(i)
        if name == "bad":  # wrong-sized output: skipped, in its place in the order
            res = StandIn(res.fused_bgr[:-1], res.mask[:-1])
        frames.append((name, ir, vis, res, label))
    serial = Evaluator(MSRS_CLASSES, baselines=True)
    for f in frames:
        serial.add(*f)
    threaded = Evaluator(MSRS_CLASSES, baselines=True)
    with ThreadPoolExecutor(3) as pool:
        records = threaded.add_many(frames[:4], pool) + threaded.add_many(frames[4:], pool)
    assert [r["name"] for r in records] == [f[0] for f in frames] and "skipped" in records[3]
    assert threaded.per_image == serial.per_image and threaded.skipped == serial.skipped
    assert np.array_equal(threaded.cm.mat, serial.cm.mat)
    a, b = threaded.finish(tmp_path / "a", {}), serial.finish(tmp_path / "b", {})
    assert a["fusion"] == b["fusion"] and a["segmentation"] == b["segmentation"]


@pytest.mark.timeout(240)
def test_mafs_eval_baseline_teacher_scores_the_teacher_on_the_same_frames(tmp_path: Path, shared_data: Path,
                                                                          sample_data: Path, monkeypatch):
    """--baseline-teacher: the MFNet teacher's per-class IoU beside the model's, from the same frames and labels,
    equal to the teacher's argmax scored by hand."""
    from mafs_core.io import list_pairs, read_ir, read_label, read_vis
    from mafs_core.teacher import TeacherSegmenter

    monkeypatch.setenv("MAFS_DATA_ROOT", str(shared_data))
    root = sample_data / "msrs"
    out = tmp_path / "eval"
    rc = mafs_main(["eval", "--ir", str(root / "ir"), "--vis", str(root / "vi"), "--labels", str(root / "label"),
                    "--out", str(out), "--device", "cpu", "--limit", "3", "--warmup", "0", "--baseline-teacher"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    teacher = TeacherSegmenter.load(shared_data / "teachers" / "mfnet" / "mfnet_final.pth")
    cm = ConfusionMatrix(9)
    for p in list_pairs(root / "ir", root / "vi", root / "label")[:3]:
        cm.update(teacher.mask(read_ir(p.ir), read_vis(p.vis)), read_label(p.label))
    t = rep["segmentation_teacher"]
    assert t["miou"] == pytest.approx(cm.miou(), rel=1e-9)
    for n, v in zip(MSRS_CLASSES, cm.iou(), strict=True):
        assert (t["iou"][n] is None) if np.isnan(v) else t["iou"][n] == pytest.approx(v, rel=1e-9), n
    md = (out / "report.md").read_text()
    assert "teacher IoU" in md and "the teacher on the same frames" in md
    # without labels there is nothing to compare: the option is accepted and adds nothing
    rc = mafs_main(["eval", "--ir", str(root / "ir"), "--vis", str(root / "vi"), "--out", str(tmp_path / "nolab"),
                    "--device", "cpu", "--limit", "1", "--warmup", "0", "--baseline-teacher"])
    assert rc == 0 and "segmentation_teacher" not in json.loads((tmp_path / "nolab" / "report.json").read_text())
    # a missing teacher file is a clear error, not a crash
    assert mafs_main(["eval", "--ir", str(root / "ir"), "--vis", str(root / "vi"), "--out", str(tmp_path / "x"),
                      "--device", "cpu", "--limit", "1", "--baseline-teacher", str(tmp_path / "none.pth")]) == 2
