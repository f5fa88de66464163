"""`mafs bag eval`: round trips through real bags, equality with `mafs eval`, partial reports on bad bags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_bag import write_fixture_pairs

from mafs_core.bag import (
    LABEL_TOPIC,
    OUTPUT_TOPICS,
    RGB_TOPIC,
    THERMAL_TOPIC,
    EvalOptions,
    MakeConfig,
    PairingOptions,
    evaluate_bag,
    make_bag,
)
from mafs_core.bagio import BagReader, BagWriter
from mafs_core.cli import main as mafs

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def engine():
    from mafs_core.engine import FusionSegmenter

    torch.set_num_threads(1)
    return FusionSegmenter.from_variant("mafs_t", seed=0, device="cpu")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    return write_fixture_pairs(tmp_path_factory.mktemp("pairs"))


QUIET = {"progress": False}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_make_eval_round_trip_with_output_bag(engine, pairs_dir: Path, tmp_path: Path, storage: str) -> None:
    bag = tmp_path / "in"
    make_bag(pairs_dir / "ir", pairs_dir / "vi", bag, pairs_dir / "label", MakeConfig(storage=storage))
    out = tmp_path / "ev"
    rep = evaluate_bag(bag, out, label_topic=LABEL_TOPIC, pairing=PairingOptions(thermal_offset=-0.015),
                       opts=EvalOptions(write_bag=True, storage=storage, batch_size=3, **QUIET), engine=engine)
    assert "error" not in rep
    assert rep["num_images"] == 8 and rep["throughput"]["frames"] == 8 and rep["throughput"]["fps"] > 0
    tp = rep["throughput"]  # batches of 3: the steady rate is over the 5 frames after the first batch
    assert 0 < tp["first_batch_s"] < tp["wall_s"] and tp["steady_fps"] > 0
    assert "after the first batch" in (out / "report.md").read_text()
    assert rep["pairing"]["matched"] == 8 and rep["pairing"]["unmatched"] == [0, 0]
    assert rep["pairing"]["labels_matched"] == 8 and rep["segmentation"]["num_labelled"] == 8
    assert abs(rep["pairing"]["stamp_diff"]["mean"]) < 4e-3  # offset removed: residual is jitter
    assert set(rep["fusion"]["model"]) >= {"EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM"}
    assert {"read_pair", "engine", "metrics", "write_bag"} <= set(rep["stage_timings_ms"])
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["pairing"]["matched"] == 8 and "## Bag replay" in (out / "report.md").read_text()

    with BagReader(out / "output_bag") as r:
        counts = r.message_counts
        assert all(counts[t] == 8 for t in OUTPUT_TOPICS.values()) and counts[RGB_TOPIC] == 8
        rgb = {f.stamp_ns: f for f in r.frames([RGB_TOPIC])}
        masks = list(r.frames([OUTPUT_TOPICS["mask"]]))
        fused = list(r.frames([OUTPUT_TOPICS["fused"]]))
    assert all(m.stamp_ns in rgb and m.frame_id == "rgb_camera" and m.encoding == "mono8" for m in masks)
    assert all(f.log_ns == rgb[f.stamp_ns].log_ns and f.image.shape == (64, 80, 3) for f in fused)
    # the masks in the bag are what the engine gives for the original files
    manifest = {int(k): v for k, v in json.loads(BagReader(bag).custom_data["mafs.manifest"]).items()}
    for m in masks[:3]:
        name = manifest[m.stamp_ns]
        ref = engine.run(cv2.imread(str(pairs_dir / "ir" / f"{name}.png"), 0),
                         cv2.imread(str(pairs_dir / "vi" / f"{name}.png")))
        assert np.array_equal(m.image, ref.mask)


@pytest.mark.timeout(240)
def test_bag_eval_equals_mafs_eval_on_real_pairs(shared_data: Path, tmp_path: Path) -> None:
    """Same frames, same network (seeded random init), same Evaluator: the same numbers."""
    src = shared_data / "msrs_person_masks"
    names = sorted(p.stem for p in (src / "ir").glob("*.png"))[:2]
    sub = tmp_path / "sub"
    for d in ("ir", "vi", "label"):
        (sub / d).mkdir(parents=True)
        for n in names:
            shutil.copy(src / d / f"{n}.png", sub / d / f"{n}.png")
    bag = tmp_path / "real"
    make_bag(sub / "ir", sub / "vi", bag, cfg=MakeConfig(rate=10))
    common = ["--random-init", "mafs_t", "--device", "cpu", "--label-mode", "binary:person",
              "--labels", str(sub / "label")]
    assert mafs(["eval", "--ir", str(sub / "ir"), "--vis", str(sub / "vi"), "--out", str(tmp_path / "a"), *common]) == 0
    assert mafs(["bag", "eval", str(bag), "--out", str(tmp_path / "b"), *common]) == 0
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert b["num_images"] == a["num_images"] == 2
    assert b["pairing"]["matched"] == 2
    for k, v in a["fusion"]["model"].items():
        assert b["fusion"]["model"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert b["segmentation"]["iou"] == a["segmentation"]["iou"]
    assert [r["name"] for r in b["per_image"]] == names  # labels found through the bag's name manifest


@pytest.mark.timeout(120)
def test_truncated_bag_gives_partial_report(engine, tmp_path: Path) -> None:
    src = write_fixture_pairs(tmp_path / "big", n=4, h=160, w=200, labels=False)
    bag = tmp_path / "trunc"
    make_bag(src / "ir", src / "vi", bag, cfg=MakeConfig(storage="mcap", loop=6))
    (f,) = bag.glob("*.mcap")
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * 0.6)])
    rep = evaluate_bag(bag, tmp_path / "ev", opts=EvalOptions(metrics=["EN"], **QUIET), engine=engine)
    assert "truncated" in rep["error"] and 2 <= rep["num_images"] < 24
    assert rep["throughput"]["frames"] == rep["num_images"] == rep["pairing"]["matched"]
    on_disk = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert on_disk["error"] == rep["error"] and "Stopped early" in (tmp_path / "ev" / "report.md").read_text()


@pytest.mark.timeout(120)
def test_bad_encoding_midway_keeps_earlier_results(engine, tmp_path: Path) -> None:
    bag = tmp_path / "enc"
    rng = np.random.default_rng(1)
    with BagWriter(bag) as w:
        for i in range(4):
            t = 1_000_000_000 + i * 100_000_000
            rgb = w.image_msg(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), "bgr8", t, "rgb_camera")
            if i == 3:
                rgb.encoding = "bayer_rggb8"
            w.write_msg(RGB_TOPIC, rgb, t)
            w.write_image(THERMAL_TOPIC, rng.integers(0, 255, (32, 48), dtype=np.uint8), "mono8", t + 5_000_000,
                          "thermal_camera")
    rep = evaluate_bag(bag, tmp_path / "ev", opts=EvalOptions(metrics=["EN"], **QUIET), engine=engine)
    assert "bayer_rggb8" in rep["error"] and rep["num_images"] == 3
    assert mafs(["bag", "eval", str(bag), "--out", str(tmp_path / "cli"), "--random-init", "mafs_t",
                 "--metrics", "EN"]) == 1
    assert mafs(["bag", "eval", str(bag), "--out", str(tmp_path / "cli2"), "--rgb-topic", "/nope",
                 "--random-init", "mafs_t"]) == 2
