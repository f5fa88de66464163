"""`mafs bag make|export` and bag reading: round trips on generated and real pairs, and every bad-bag case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from mafs_core.bag import (
    LABEL_TOPIC,
    RGB_TOPIC,
    THERMAL_TOPIC,
    MakeConfig,
    PairingOptions,
    iter_pairs,
    make_bag,
)
from mafs_core.bagio import BagError, BagReader, BagWriter, image_to_array
from mafs_core.cli import main as mafs

H, W = 64, 80


def write_fixture_pairs(root: Path, n: int = 8, h: int = H, w: int = W, ir16: bool = False, labels: bool = True,
                        seed: int = 0) -> Path:
    """Folders ir/, vi/, label/ of n random-but-structured pairs named f000..; returns root."""
    rng = np.random.default_rng(seed)
    for sub in ("ir", "vi") + (("label",) if labels else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        yy, xx = np.mgrid[0:h, 0:w]
        blob = ((yy - h / 2 - 5 * np.sin(i)) ** 2 + (xx - (w / 4 + 4 * i)) ** 2) < (h / 5) ** 2
        ir = (60 + 150 * blob + rng.integers(0, 20, (h, w))).astype(np.uint8)
        if ir16:
            ir = ir.astype(np.uint16) * 200 + 1000
        vis = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "ir" / f"f{i:03d}.png"), ir)
        cv2.imwrite(str(root / "vi" / f"f{i:03d}.png"), vis)
        if labels:
            cv2.imwrite(str(root / "label" / f"f{i:03d}.png"), (blob * 2).astype(np.uint8))
    return root


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    return write_fixture_pairs(tmp_path / "pairs")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_make_then_pair_round_trip(pairs_dir: Path, tmp_path: Path, storage: str) -> None:
    bag = tmp_path / f"bag_{storage}"
    info = make_bag(pairs_dir / "ir", pairs_dir / "vi", bag, pairs_dir / "label", MakeConfig(storage=storage))
    assert info["frames"] == 8 and info["labels"]
    with BagReader(bag) as r:
        assert r.topics == {THERMAL_TOPIC: "sensor_msgs/msg/Image", RGB_TOPIC: "sensor_msgs/msg/Image",
                            LABEL_TOPIC: "sensor_msgs/msg/Image"}
        assert r.message_counts == {THERMAL_TOPIC: 8, RGB_TOPIC: 8, LABEL_TOPIC: 8}
        frames = list(r.frames([THERMAL_TOPIC, RGB_TOPIC]))
        logs = [f.log_ns for f in frames]
        assert logs == sorted(logs), "messages must come out in log-time order"
        assert all(f.log_ns == f.stamp_ns for f in frames), "log time = header stamp"
        rgb = [f for f in frames if f.topic == RGB_TOPIC]
        th = [f for f in frames if f.topic == THERMAL_TOPIC]
        assert {f.frame_id for f in rgb} == {"rgb_camera"} and {f.frame_id for f in th} == {"thermal_camera"}
        period = np.diff([f.stamp_ns for f in rgb]) * 1e-9
        assert abs(np.mean(period) - 1 / 30) < 3e-3 and period.std() > 0, "30 Hz with jitter"
        offsets = (np.array([f.stamp_ns for f in th]) - np.array([f.stamp_ns for f in rgb])) * 1e-9
        assert abs(offsets.mean() - 0.015) < 4e-3, "thermal trails rgb by ~15 ms"

        pairs = list(iter_pairs(r, THERMAL_TOPIC, RGB_TOPIC, LABEL_TOPIC, PairingOptions(thermal_offset=-0.015)))
    assert [p.name for p in pairs] == [f"f{i:03d}" for i in range(8)]
    for p in pairs:  # pixels survive the bag bit-exactly, in every modality
        assert np.array_equal(p.rgb.image, cv2.imread(str(pairs_dir / "vi" / f"{p.name}.png")))
        assert np.array_equal(p.thermal.image, cv2.imread(str(pairs_dir / "ir" / f"{p.name}.png"), 0))
        assert np.array_equal(p.label, cv2.imread(str(pairs_dir / "label" / f"{p.name}.png"), 0))


def test_mono16_and_loop(tmp_path: Path) -> None:
    src = write_fixture_pairs(tmp_path / "p16", n=3, ir16=True, labels=False)
    bag = tmp_path / "bag16"
    assert mafs(["bag", "make", "--ir", str(src / "ir"), "--vis", str(src / "vi"), "--out", str(bag),
                 "--loop", "2", "--rate", "10"]) == 0
    with BagReader(bag) as r:
        th = list(r.frames([THERMAL_TOPIC]))
    assert len(th) == 6 and {f.encoding for f in th} == {"mono16"}
    assert th[0].image.dtype == np.uint16
    assert np.array_equal(th[3].image, cv2.imread(str(src / "ir" / "f000.png"), cv2.IMREAD_UNCHANGED))


def test_export_is_a_training_folder(pairs_dir: Path, tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    make_bag(pairs_dir / "ir", pairs_dir / "vi", bag, pairs_dir / "label", MakeConfig(storage="sqlite3"))
    out = tmp_path / "export"
    assert mafs(["bag", "export", str(bag), "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["pairs"] == 8 and m["label_topic"] == LABEL_TOPIC and m["pairing"]["matched"] == 8
    names = sorted(p.stem for p in (out / "ir").glob("*.png"))
    for sub in ("vi", "label"):
        assert names == sorted(p.stem for p in (out / sub).glob("*.png"))
    assert names[0].startswith("000000_") and int(names[0].split("_")[1]) == m["frames"][0]["rgb_stamp_ns"]
    row = m["frames"][3]
    assert row["source"] == "f003"
    assert np.array_equal(cv2.imread(str(out / "vi" / f"{row['name']}.png")),
                          cv2.imread(str(pairs_dir / "vi/f003.png")))
    assert np.array_equal(cv2.imread(str(out / "label" / f"{row['name']}.png"), 0),
                          cv2.imread(str(pairs_dir / "label/f003.png"), 0))
    # what the trainer's generic-folder dataset reads: the same names in ir/, vi/, label/
    from mafs_core.io import list_pairs

    assert len(list_pairs(out / "ir", out / "vi", out / "label", strict=True)) == 8


def test_real_pairs_round_trip(sample_data: Path, tmp_path: Path) -> None:
    d = sample_data / "msrs"
    names = ["00004N", "00537D"]
    bag = tmp_path / "real"
    make_bag(d / "ir", d / "vi", bag, cfg=MakeConfig(rate=10), names=names)
    with BagReader(bag) as r:
        pairs = list(iter_pairs(r, THERMAL_TOPIC, RGB_TOPIC))
    assert [p.name for p in pairs] == names
    assert pairs[1].rgb.image.shape == (480, 640, 3)
    assert np.array_equal(pairs[1].rgb.image, cv2.imread(str(d / "vi" / "00537D.png")))
    assert np.array_equal(pairs[1].thermal.image, cv2.imread(str(d / "ir" / "00537D.png"), 0))


def test_image_step_padding_and_big_endian() -> None:
    class Msg:  # the fields every sensor_msgs/Image has (rosbags or rclpy)
        pass

    arr = np.arange(6 * 5, dtype=np.uint16).reshape(6, 5) * 300
    m = Msg()
    m.height, m.width, m.encoding, m.is_bigendian, m.step = 6, 5, "mono16", 1, 12
    rows = np.zeros((6, 12), np.uint8)
    rows[:, :10] = arr.astype(">u2").view(np.uint8).reshape(6, 10)
    m.data = rows.tobytes()
    assert np.array_equal(image_to_array(m), arr)


# ---------------------------------------------------------------- bad bags: a named BagError each


@pytest.fixture
def good_bag(pairs_dir: Path, tmp_path: Path) -> Path:
    bag = tmp_path / "good"
    make_bag(pairs_dir / "ir", pairs_dir / "vi", bag, cfg=MakeConfig(storage="mcap"))
    return bag


def test_missing_bag_and_missing_topic(good_bag: Path, tmp_path: Path) -> None:
    with pytest.raises(BagError, match="not found"):
        BagReader(tmp_path / "nope")
    with BagReader(good_bag) as r, pytest.raises(BagError, match="'/thermal/wrong' not in bag"):
        list(iter_pairs(r, "/thermal/wrong", RGB_TOPIC))
    assert mafs(["bag", "export", str(good_bag), "--out", str(tmp_path / "x"), "--rgb-topic", "/nope"]) == 2


def test_truncated_mcap_is_read_up_to_the_cut(tmp_path: Path) -> None:
    """A recording cut off mid-write (no MCAP footer, no metadata.yaml) yields what it holds, then a named error."""
    src = write_fixture_pairs(tmp_path / "big", n=4, h=160, w=200, labels=False)
    bag = tmp_path / "trunc"
    make_bag(src / "ir", src / "vi", bag, cfg=MakeConfig(storage="mcap", loop=6))
    (f,) = bag.glob("*.mcap")
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * 0.6)])
    (bag / "metadata.yaml").unlink()  # ros2 bag record writes it last: a killed recorder leaves none
    got = []
    with BagReader(bag) as r, pytest.raises(BagError, match=r"truncated \(trunc.mcap cut at byte \d+, no MCAP footer"):
        for fr in r.frames([THERMAL_TOPIC, RGB_TOPIC]):
            got.append(fr)
    assert 4 <= len(got) < 48
    assert np.array_equal(got[0].image, cv2.imread(str(src / "vi" / "f000.png")))
    # export keeps the pairs read before the cut and records the error
    out = tmp_path / "exp"
    assert mafs(["bag", "export", str(bag), "--out", str(out)]) == 1
    m = json.loads((out / "manifest.json").read_text())
    assert "truncated" in m["error"] and 2 <= m["pairs"] < 24 and len(list((out / "ir").glob("*.png"))) == m["pairs"]


def test_truncated_sqlite3_is_refused_with_a_named_error(pairs_dir: Path, tmp_path: Path) -> None:
    bag = tmp_path / "trunc"
    make_bag(pairs_dir / "ir", pairs_dir / "vi", bag, cfg=MakeConfig(storage="sqlite3", loop=4))
    (f,) = bag.glob("*.db3")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(BagError, match="truncated"):
        with BagReader(bag) as r:
            list(r.frames([THERMAL_TOPIC, RGB_TOPIC]))
    assert mafs(["bag", "export", str(bag), "--out", str(tmp_path / "exp")]) == 2


def test_unknown_type_and_wrong_type(tmp_path: Path) -> None:
    bag = tmp_path / "weird"
    with BagWriter(bag) as w:
        conn = w._writer.add_connection("/weird", "acme_msgs/msg/Blob", msgdef="uint8[] payload",
                                        rihs01="RIHS01_" + "0" * 64)
        w._writer.write(conn, 1, b"\x00\x01\x00\x00" + b"\x00" * 4)
        s = w.typestore.types["std_msgs/msg/String"](data="hi")
        w.write_msg("/text", s, 2)
    with BagReader(bag) as r:
        with pytest.raises(BagError, match="acme_msgs/msg/Blob"):
            r.check_topics(["/weird"])
        with pytest.raises(BagError, match="std_msgs/msg/String"):
            r.check_topics(["/text"])


def test_unsupported_encoding(pairs_dir: Path, tmp_path: Path) -> None:
    bag = tmp_path / "yuv"
    with BagWriter(bag) as w:
        for i in range(3):
            msg = w.image_msg(np.zeros((4, 6, 3), np.uint8), "bgr8", 1000 + i, "rgb_camera")
            if i == 2:
                msg.encoding = "yuv422_yuy2"
            w.write_msg(RGB_TOPIC, msg, 1000 + i)
    with BagReader(bag) as r:
        got = []
        with pytest.raises(BagError, match="unsupported image encoding 'yuv422_yuy2' on topic '/rgb/image_raw'"):
            for f in r.frames([RGB_TOPIC]):
                got.append(f)
    assert len(got) == 2, "frames before the fault are delivered"


def test_make_refuses_to_overwrite(good_bag: Path, pairs_dir: Path) -> None:
    with pytest.raises(BagError, match="exists already"):
        make_bag(pairs_dir / "ir", pairs_dir / "vi", good_bag)
    shutil.rmtree(good_bag)


@pytest.mark.timeout(180)
def test_export_then_train_a_few_steps(pairs_dir: Path, tmp_path: Path) -> None:
    """The exported folder is a `paired` training source as is (TRAIN's generic-folder dataset)."""
    train = pytest.importorskip("mafs_core.train", reason="mafs_core.train not built yet")
    from mafs_core.datasets import AugmentConfig

    bag = tmp_path / "bag"
    make_bag(pairs_dir / "ir", pairs_dir / "vi", bag, pairs_dir / "label")
    out = tmp_path / "export"
    assert mafs(["bag", "export", str(bag), "--out", str(out)]) == 0
    cfg = train.TrainConfig()
    cfg.data = train.DataConfig(root=str(out), sources=[train.SourceConfig(kind="paired")], batch_size=2,
                                num_workers=0, augment=AugmentConfig(resize=[64, 64], hflip=False))
    cfg.train = train.RunConfig(stage="mae", steps=2, device="cpu", out_dir=str(tmp_path / "run"), ckpt_every=1000,
                                val_every=1000, log_every=1000, image_every=1000, progress=False, threads=1)
    train.train(cfg)
    losses = [json.loads(x) for x in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(v) for r in losses for k, v in r.items()
                                    if isinstance(v, float))


def test_compressed_images_are_decoded(tmp_path: Path) -> None:
    """sensor_msgs/CompressedImage topics (what many drivers record) read like raw ones; 16-bit PNG stays 16-bit."""
    bag = tmp_path / "comp"
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    th = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 50)
    with BagWriter(bag) as w:
        t = w.typestore.types
        for topic, img, stamp in ((RGB_TOPIC, rgb, 10), (THERMAL_TOPIC, th, 12)):
            header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=1, nanosec=stamp),
                                              frame_id="cam")
            data = np.frombuffer(cv2.imencode(".png", img)[1].tobytes(), np.uint8)
            w.write_msg(topic, t["sensor_msgs/msg/CompressedImage"](header=header, format="png", data=data), stamp)
    with BagReader(bag) as r:
        frames = {f.topic: f for f in r.frames([RGB_TOPIC, THERMAL_TOPIC])}
    assert frames[RGB_TOPIC].encoding == "bgr8" and np.array_equal(frames[RGB_TOPIC].image, rgb)
    assert frames[THERMAL_TOPIC].encoding == "mono16" and np.array_equal(frames[THERMAL_TOPIC].image, th)


@pytest.mark.parametrize("store", ["ROS2_HUMBLE", "ROS2_JAZZY"])
def test_bags_written_with_older_distros_read(tmp_path: Path, store: str) -> None:
    """A bag written with another distro's type store (and rosbag2 format 8) reads the same."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(getattr(Stores, store))
    img = np.random.default_rng(2).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    t = ts.types
    msg = t["sensor_msgs/msg/Image"](
        header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=3, nanosec=4), frame_id="c"),
        height=6, width=10, encoding="rgb8", is_bigendian=0, step=30, data=img.reshape(-1))
    bag = tmp_path / store
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        conn = w.add_connection(RGB_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        w.write(conn, 5, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    with BagReader(bag) as r:
        (f,) = list(r.frames([RGB_TOPIC]))
    assert f.stamp_ns == 3_000_000_004 and f.encoding == "rgb8" and np.array_equal(f.image, img)
