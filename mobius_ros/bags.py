"""rosbag2 files with the pure-Python ``rosbags`` package (no ROS installation needed).

``make_bag`` writes synthetic-benchmark frames as a bag plus COCO ground truth keyed by the
message timestamp; ``read_frames`` reads the images of one topic from any bag, tolerating
what real recordings contain (other message types on the topic, undecodable messages,
out-of-order stamps) and saying what it skipped; ``BagRecorder`` writes messages the node
published into an output bag that stays readable if the replay is interrupted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobius_core.atomic import atomic_write_bytes

from .conversions import ImageError, compressed_to_rgb, image_to_rgb

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
MSG_NAMES = ("Instance", "InstanceArray")


def msg_dir() -> Path:
    """The folder with this package's .msg definitions, for writing them into output bags:
    the installed ``share/mobius_ros/msg`` (the definitions the generated Python types were
    built from), else ``msg/`` of the source tree. FileNotFoundError naming the places
    looked at and the fix when none has them."""
    places = []
    try:
        from ament_index_python.packages import get_package_share_directory

        places.append(Path(get_package_share_directory("mobius_ros")) / "msg")
    except (ImportError, LookupError, OSError, ValueError):  # not on AMENT_PREFIX_PATH
        pass
    places += [Path(sys.prefix) / "share" / "mobius_ros" / "msg",
               Path(__file__).resolve().parents[1] / "msg"]  # fmt: skip
    for place in places:
        if all((place / f"{name}.msg").is_file() for name in MSG_NAMES):
            return place
    raise FileNotFoundError(
        "the mobius_ros message definitions (msg/Instance.msg, msg/InstanceArray.msg) are in "
        f"none of {', '.join(str(p) for p in dict.fromkeys(places))}; install the package "
        "with `make ros` (it puts them in share/mobius_ros/msg) or run from the source tree"
    )


def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def make_bag(
    out: str | Path, split: str = "val", frames: int = 20, seed: int = 0,
    size: tuple[int, int] = (320, 320), fps: float = 10.0, storage: str = "mcap",
) -> tuple[Path, Path]:  # fmt: skip
    """Write ``out/bag`` (``/camera/image_raw`` rgb8 + ``/camera/camera_info``) and
    ``out/gt.json`` (COCO; each image carries ``timestamp_ns``, its message's time)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mobius_core.data.synthetic import generate_split

    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
    if plugin is None:
        raise ValueError(f"storage {storage!r}: use mcap or sqlite3")
    out = Path(out)
    bag = out / "bag"
    if bag.exists():
        raise FileExistsError(f"{bag} exists; remove it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    data = generate_split(split, frames, seed, size)
    ts = typestore()
    Image = ts.types["sensor_msgs/msg/Image"]
    CameraInfo = ts.types["sensor_msgs/msg/CameraInfo"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    t0 = 1_700_000_000 * 10**9
    coco = data["coco"]
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        img_conn = writer.add_connection(IMAGE_TOPIC, Image.__msgtype__, typestore=ts)
        info_conn = writer.add_connection(INFO_TOPIC, CameraInfo.__msgtype__, typestore=ts)
        for k, record in enumerate(coco["images"]):
            t = t0 + int(k * 1e9 / fps)
            record["timestamp_ns"] = t
            rgb = data["images"][record["id"]]
            h, w = rgb.shape[:2]
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera")
            msg = Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                        step=3 * w, data=np.ascontiguousarray(rgb).reshape(-1))  # fmt: skip
            writer.write(img_conn, t, ts.serialize_cdr(msg, Image.__msgtype__))
            f = 0.8 * w
            info = CameraInfo(
                header=header, height=h, width=w, distortion_model="plumb_bob",
                d=np.zeros(5), k=np.array([f, 0, w / 2, 0, f, h / 2, 0, 0, 1.0]),
                r=np.eye(3).reshape(-1), p=np.array([f, 0, w / 2, 0, 0, f, h / 2, 0, 0, 0, 1, 0.0]),
                binning_x=0, binning_y=0,
                roi=ts.types["sensor_msgs/msg/RegionOfInterest"](
                    x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
            )  # fmt: skip
            writer.write(info_conn, t, ts.serialize_cdr(info, CameraInfo.__msgtype__))
    gt = out / "gt.json"
    atomic_write_bytes(gt, json.dumps(coco).encode())
    return bag, gt


@dataclass
class Frame:
    index: int  # position in the bag's order
    timestamp_ns: int  # the bag's receive time
    stamp_ns: int  # header stamp
    rgb: np.ndarray


@dataclass
class ReadReport:
    """What reading a topic skipped, for the replay report."""

    frames: int = 0
    skipped_type: int = 0
    skipped_corrupt: int = 0
    out_of_order: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def bag_topics(bag: str | Path) -> dict[str, str]:
    """topic -> message type of a bag; ValueError naming the problem if it cannot be read."""
    from rosbags.rosbag2 import Reader

    try:
        with Reader(bag) as reader:
            return {c.topic: c.msgtype for c in reader.connections}
    except Exception as exc:  # rosbags raises its own types for every kind of bad file
        raise ValueError(f"cannot open bag {bag}: {exc}; is it a rosbag2 folder?") from exc


def check_topic(bag: str | Path, topic: str) -> None:
    """ValueError naming the image topics that are there when ``topic`` is not."""
    topics = bag_topics(bag)
    if topic not in topics:
        images = [t for t, m in topics.items() if m in IMAGE_TYPES]
        raise ValueError(
            f"topic {topic!r} is not in {bag}; image topics there: {images or 'none'} "
            f"(all topics: {sorted(topics)})"
        )


def read_frames(bag: str | Path, topic: str, report: ReadReport) -> Iterator[Frame]:
    """The images on ``topic`` in bag order; problems go to ``report``, never raise."""
    from rosbags.rosbag2 import Reader

    check_topic(bag, topic)
    ts = typestore()
    last = -1
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        listed = sum(int(getattr(c, "msgcount", 0) or 0) for c in conns)
        iterator = reader.messages(connections=conns)
        seen = 0
        while True:
            try:
                conn, t, raw = next(iterator)
                seen += 1
            except StopIteration:
                if listed and seen < listed:  # records lost inside a damaged chunk
                    report.skipped_corrupt += listed - seen
                    report.note(f"the bag lists {listed} messages on {topic} but only {seen} "
                                "could be read: part of the file is corrupt")  # fmt: skip
                return
            except Exception as exc:  # a corrupt chunk: note it and stop reading this bag
                report.skipped_corrupt += 1
                report.note(
                    f"reading stopped at a corrupt chunk after {report.frames} frames: {exc}"
                )
                return
            if conn.msgtype not in IMAGE_TYPES:
                report.skipped_type += 1
                report.note(f"{conn.msgtype} on {topic} at {t}: not an image, skipped")
                continue
            try:
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                if conn.msgtype.endswith("CompressedImage"):
                    rgb = compressed_to_rgb(msg.format, bytes(msg.data))
                else:
                    rgb = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                                       np.asarray(msg.data).tobytes())  # fmt: skip
            except (ImageError, ValueError, AssertionError, IndexError, KeyError) as exc:
                report.skipped_corrupt += 1
                report.note(f"message at {t} cannot be used: {exc}")
                continue
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            if stamp < last:
                report.out_of_order += 1
                report.note(f"header stamp {stamp} at {t} is older than the frame before")
            last = max(last, stamp)
            yield Frame(report.frames, t, stamp, rgb)
            report.frames += 1


class BagRecorder:
    """Writes serialized messages the node published into ``path`` (a new rosbag2 folder).
    Closed in ``__exit__`` so an interrupted replay leaves a readable bag."""

    def __init__(self, path: str | Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import get_types_from_msg

        self.ts = typestore()
        folder = msg_dir()
        for name in MSG_NAMES:
            text = (folder / f"{name}.msg").read_text()
            self.ts.register(get_types_from_msg(text, f"mobius_ros/msg/{name}"))
        self.writer = Writer(Path(path), version=9, storage_plugin=StoragePlugin.MCAP)
        self.connections: dict[str, Any] = {}
        self.count = 0

    def __enter__(self) -> BagRecorder:
        self.writer.open()
        return self

    def write(self, topic: str, msgtype: str, timestamp_ns: int, cdr: bytes) -> None:
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        self.writer.write(self.connections[topic], timestamp_ns, cdr)
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.writer.close()
