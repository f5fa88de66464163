"""Low-level rosbag2 reading and writing of camera images, with `rosbags` (no ROS install needed).

The one place that knows how a sensor_msgs/Image (or CompressedImage) maps to a numpy array,
and how a bag fails: every fault (missing file, truncated storage, missing topic, unknown
type, unsupported encoding) becomes a `BagError` that names what went wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from mafs_core.io import IMAGE_ENCODINGS, ImageFormatError
from mafs_core.io import image_to_array as decode_image

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE, COMPRESSED)

MANIFEST_KEY = "mafs.manifest"  # bag custom_data written by `mafs bag make`: frame names by rgb stamp


class BagError(RuntimeError):
    """A bag that cannot be used as asked; the message names the bag, topic, type or encoding."""


def _typestore() -> Typestore:
    """The newest ROS 2 store rosbags knows (Kilted in 0.11); sensor_msgs/Image is the same since Humble."""
    for name in ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_HUMBLE"):
        if hasattr(Stores, name):
            return get_typestore(getattr(Stores, name))
    return get_typestore(Stores.LATEST)


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


# ---------------------------------------------------------------- Image <-> numpy


def image_to_array(msg, topic: str = "") -> np.ndarray:
    """A sensor_msgs/Image as an array (`mafs_core.io.image_to_array`); errors name the bag topic."""
    try:
        return decode_image(msg, f" on topic {topic!r}" if topic else "")
    except ImageFormatError as exc:
        raise BagError(str(exc)) from exc


def compressed_to_array(msg) -> tuple[np.ndarray, str]:
    """A CompressedImage decoded with OpenCV -> (array, encoding); 16-bit PNG stays 16-bit."""
    arr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise BagError(f"undecodable CompressedImage (format {msg.format!r})")
    if arr.ndim == 2:
        return arr, "mono16" if arr.dtype == np.uint16 else "mono8"
    if arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2BGR)
    return arr, "bgr8"


def to_bgr8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Any supported colour/grey image as HxWx3 BGR uint8 (for PNG export and montages)."""
    if encoding in ("rgb8",):
        return cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if encoding in ("rgba8",):
        return cv2.cvtColor(arr, cv2.COLOR_RGBA2BGR)
    if encoding in ("bgra8", "8UC4"):
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2BGR)
    if arr.ndim == 2:
        if arr.dtype != np.uint8:
            arr = cv2.normalize(arr, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    return arr


# ---------------------------------------------------------------- reading


class TruncatedMcapReader(McapReader):
    """An MCAP file cut off mid-recording (no footer, no index: power loss, killed recorder).

    rosbags refuses such files; this reads every complete top-level record before the cut, by the
    unindexed scan rosbags already has. `truncated_at` = file size, `data_end` = end of the last good record.
    """

    truncated_at: int = 0

    def _open(self) -> None:
        try:
            super()._open()
            return
        except ReaderError as exc:
            if "end magic" not in str(exc) and "footer" not in str(exc):
                raise
        bio = self.bio
        assert bio is not None
        size = bio.seek(0, 2)
        pos = self.data_start
        while pos + 9 <= size:  # record = opcode u8 + length u64 + content
            bio.seek(pos + 1)
            length = int.from_bytes(bio.read(8), "little")
            if pos + 9 + length > size:
                break
            pos += 9 + length
        self.data_end, self.truncated_at = pos, size
        self.schemas.clear(), self.channels.clear(), self.chunks.clear()
        self.connections = []
        self.meta_scan()
        st = self.statistics
        assert st is not None
        self.connections = [c._replace(msgcount=st.channel_message_counts.get(c.id, 0)) for c in self.connections]
        n = st.message_count
        self.metadata = self.metadata._replace(
            duration=st.end_time - st.start_time + 1 if n else 0, start_time=st.start_time if n else 2**63 - 1,
            end_time=st.end_time + 1 if n else 0, message_count=n)


@dataclass
class Frame:
    """One image message: log time and header stamp in ns, frame_id, pixels in `encoding`."""

    topic: str
    log_ns: int
    stamp_ns: int
    frame_id: str
    encoding: str
    image: np.ndarray

    @property
    def stamp(self) -> float:
        return self.stamp_ns * 1e-9


class BagReader:
    """Opens a rosbag2 (directory, .mcap or .db3) and yields deserialised image frames in log-time order.

    Types come from the newest store; types a bag defines that the store lacks are registered from the
    bag's own definitions (so custom types of other distros still deserialise).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        self.truncated: str | None = None  # set when only the part before a cut could be read
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:
            self._reader = self._open_truncated_mcap(exc)
        self.typestore = _typestore()
        for conn in self._reader.connections:
            if conn.msgtype in self.typestore.types or not conn.msgdef.data:
                continue
            try:  # only MSG-format definitions are registered: enough for the bags rosbag2 writes today
                self.typestore.register(get_types_from_msg(conn.msgdef.data, conn.msgtype))
            except Exception:  # an undecodable definition only matters if that topic is read
                pass

    def _open_truncated_mcap(self, exc: Exception):
        """A recording cut off before its MCAP footer (and often its metadata.yaml) is read up to the cut."""
        files = [self.path] if self.path.suffix == ".mcap" else sorted(self.path.glob("*.mcap"))
        if len(files) == 1 and ("end magic" in str(exc) or "metadata" in str(exc).lower()):
            reader = TruncatedMcapReader(files[0])
            try:
                reader.open()
            except Exception:
                pass
            else:
                if reader.truncated_at:
                    self.truncated = (f"bag {self.path} is truncated ({files[0].name} cut at byte "
                                      f"{reader.truncated_at}, no MCAP footer): read the "
                                      f"{reader.metadata.message_count} complete messages before the cut")
                return reader
        raise BagError(f"cannot open bag {self.path}: {exc} (truncated or not a rosbag2?)") from exc

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    @property
    def message_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self._reader.connections:
            counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        return counts

    @property
    def custom_data(self) -> dict[str, str]:
        meta = getattr(getattr(self._reader, "storage", self._reader), "metadata", None)
        return dict(getattr(meta, "custom", None) or {})

    def manifest(self) -> dict[int, str]:
        """{rgb stamp ns: source frame name} when the bag was made by `mafs bag make`, else {}."""
        raw = self.custom_data.get(MANIFEST_KEY)
        return {int(k): v for k, v in json.loads(raw).items()} if raw else {}

    def check_topics(self, topics: Iterable[str], allowed_types: Sequence[str] = IMAGE_TYPES) -> None:
        have = self.topics
        for t in topics:
            if t not in have:
                listing = ", ".join(f"{k} [{v}]" for k, v in sorted(have.items())) or "none"
                raise BagError(f"topic {t!r} not in bag {self.path} (topics: {listing})")
            if have[t] not in allowed_types:
                raise BagError(f"topic {t!r} has message type {have[t]!r}; expected one of {list(allowed_types)}")
            if have[t] not in self.typestore.types:
                raise BagError(f"unknown message type {have[t]!r} on {t!r} (no definition in bag or typestore)")

    def raw(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """(topic, msgtype, log ns, cdr bytes) in log-time order; storage faults become BagError."""
        wanted = set(topics) if topics is not None else None
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        it = self._reader.messages(connections=conns)
        while True:
            try:
                conn, t, data = next(it)
            except StopIteration:
                if self.truncated:  # everything before the cut has been delivered: now say so
                    raise BagError(self.truncated) from None
                return
            except Exception as exc:
                raise BagError(f"bag {self.path} is corrupt or truncated: {type(exc).__name__}: {exc}") from exc
            yield conn.topic, conn.msgtype, t, data

    def deserialize(self, data: bytes, msgtype: str):
        if msgtype not in self.typestore.types:
            raise BagError(f"unknown message type {msgtype!r} in bag {self.path}")
        try:
            return self.typestore.deserialize_cdr(data, msgtype)
        except Exception as exc:
            raise BagError(f"cannot deserialise a {msgtype} message in {self.path}: {exc}") from exc

    def frames(self, topics: Sequence[str]) -> Iterator[Frame]:
        """Image frames of `topics` in log-time order (the order a live subscriber would see them)."""
        self.check_topics(topics)
        for topic, msgtype, t, data in self.raw(topics):
            msg = self.deserialize(data, msgtype)
            if msgtype == COMPRESSED:
                arr, enc = compressed_to_array(msg)
            else:
                arr, enc = image_to_array(msg, topic), msg.encoding
                if not arr.flags.writeable:  # a view on the read-only message buffer: callers may edit in place
                    arr = arr.copy()
            yield Frame(topic, t, stamp_ns(msg.header), msg.header.frame_id, enc, arr)


# ---------------------------------------------------------------- writing


def storage_of(name: str) -> StoragePlugin:
    try:
        return {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[name]
    except KeyError:
        raise BagError(f"unknown storage {name!r}; use mcap or sqlite3") from None


class BagWriter:
    """A rosbag2 writer for images with lazily added topics; `log time = header stamp` unless given."""

    def __init__(self, path: str | Path, storage: str = "mcap", version: int = 9):
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"output bag {self.path} exists already; remove it or choose another --out")
        self.typestore = _typestore()
        self._writer = Writer(self.path, version=version, storage_plugin=storage_of(storage))
        self._writer.open()
        self._conns: dict[str, object] = {}
        self.count = 0

    def set_custom_data(self, key: str, value: str) -> None:
        self._writer.set_custom_data(key, value)

    def _conn(self, topic: str, msgtype: str):
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        return self._conns[topic]

    def write_msg(self, topic: str, msg, log_ns: int) -> None:
        data = self.typestore.serialize_cdr(msg, msg.__msgtype__)
        self._writer.write(self._conn(topic, msg.__msgtype__), int(log_ns), data)
        self.count += 1

    def write_raw(self, topic: str, msgtype: str, data: bytes, log_ns: int) -> None:
        self._writer.write(self._conn(topic, msgtype), int(log_ns), data)
        self.count += 1

    def image_msg(self, image: np.ndarray, encoding: str, stamp: int, frame_id: str):
        """A rosbags sensor_msgs/Image of `image` (HxW or HxWxC, dtype matching `encoding`)."""
        dtype, ch = IMAGE_ENCODINGS[encoding]
        image = np.ascontiguousarray(image, dtype=dtype)
        if (image.shape[2] if image.ndim == 3 else 1) != ch:
            raise BagError(f"image of shape {image.shape} does not fit encoding {encoding}")
        t = self.typestore.types
        header = t["std_msgs/msg/Header"](
            stamp=t["builtin_interfaces/msg/Time"](sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
            frame_id=frame_id)
        h, w = image.shape[:2]
        return t[IMAGE](header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                        step=w * ch * image.itemsize, data=image.reshape(-1).view(np.uint8))

    def write_image(self, topic: str, image: np.ndarray, encoding: str, stamp: int, frame_id: str,
                    log_ns: int | None = None) -> None:
        self.write_msg(topic, self.image_msg(image, encoding, stamp, frame_id), stamp if log_ns is None else log_ns)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
