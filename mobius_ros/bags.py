"""rosbag2 files with the pure-Python ``rosbags`` package (no ROS installation needed).

``make_bag`` writes synthetic-benchmark frames as a bag plus COCO ground truth keyed by the
message timestamp (``rgbd=True``: the synthetic RGB-D world, with registered depth, its
intrinsics and 3D ground truth); ``read_messages`` reads the messages of one topic, and
``read_frames`` the images of one topic, from any bag, tolerating
what real recordings contain (other message types on the topic, undecodable messages,
out-of-order stamps, a storage file cut short or a recorder killed before it wrote
metadata.yaml: read up to the damage) and saying what it skipped; ``BagRecorder`` writes
messages the node published into an output bag that stays readable if the replay is
interrupted.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobius_core.atomic import atomic_write_bytes

from .conversions import ImageError, compressed_to_rgb, image_to_rgb

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
DEPTH_TOPIC = "/camera/depth/image_raw"
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
    size: tuple[int, int] | None = None, fps: float = 10.0, storage: str = "mcap",
    rgbd: bool = False,
) -> tuple[Path, Path]:  # fmt: skip
    """Write ``out/bag`` (``/camera/image_raw`` rgb8 + ``/camera/camera_info``) and
    ``out/gt.json`` (COCO; each image carries ``timestamp_ns``, its message's time).

    ``size`` (H, W): default 320x320, with ``rgbd`` 480x640. ``rgbd``: the scenes of the
    synthetic RGB-D world (``rgbd_scenes(frames, seed, size)``; ``split`` must be ``val``)
    instead of the 2D benchmark, with ``/camera/depth/image_raw`` (16UC1 millimetres,
    registered to the image, the same stamps), the scenes' own intrinsics in camera_info,
    and per annotation ``center_3d``, ``box3d`` ([min xyz, max xyz]), ``distance`` (metres,
    optical frame) and ``visible_fraction``."""
    from rosbags.rosbag2 import StoragePlugin

    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
    if plugin is None:
        raise ValueError(f"storage {storage!r}: use mcap or sqlite3")
    if rgbd and split != "val":
        raise ValueError(f"split {split!r}: the RGB-D bag takes the scenes of rgbd_scenes "
                         "(split val); choose them with seed")  # fmt: skip
    out = Path(out)
    bag = out / "bag"
    if bag.exists():
        raise FileExistsError(f"{bag} exists; remove it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if rgbd:
        coco = _rgbd_coco_header(seed)
        items = _rgbd_items(coco, frames, seed, tuple(size or (480, 640)))
    else:
        from mobius_core.data.synthetic import generate_split

        data = generate_split(split, frames, seed, tuple(size or (320, 320)))
        coco = data["coco"]
        items = ((rec, data["images"][rec["id"]], None, None) for rec in coco["images"])
    _write_bag(bag, plugin, items, fps, depth=rgbd)
    gt = out / "gt.json"
    atomic_write_bytes(gt, json.dumps(coco).encode())
    return bag, gt


def _write_bag(bag: Path, plugin, items, fps: float, depth: bool) -> None:
    """The frames of ``items`` ((COCO image record, RGB, depth mm or None, Intrinsics or
    None)) as a bag at ``fps``; each record gets its ``timestamp_ns``. Without intrinsics
    camera_info has a plausible pinhole camera (focal length 0.8 x width)."""
    from rosbags.rosbag2 import Writer

    ts = typestore()
    Image = ts.types["sensor_msgs/msg/Image"]
    CameraInfo = ts.types["sensor_msgs/msg/CameraInfo"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    t0 = 1_700_000_000 * 10**9
    with Writer(bag, version=9, storage_plugin=plugin) as writer:
        img_conn = writer.add_connection(IMAGE_TOPIC, Image.__msgtype__, typestore=ts)
        info_conn = writer.add_connection(INFO_TOPIC, CameraInfo.__msgtype__, typestore=ts)
        if depth:
            depth_conn = writer.add_connection(DEPTH_TOPIC, Image.__msgtype__, typestore=ts)
        for k, (record, rgb, depth_mm, camera) in enumerate(items):
            t = t0 + int(k * 1e9 / fps)
            record["timestamp_ns"] = t
            h, w = rgb.shape[:2]
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera")
            msg = Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                        step=3 * w, data=np.ascontiguousarray(rgb).reshape(-1))  # fmt: skip
            writer.write(img_conn, t, ts.serialize_cdr(msg, Image.__msgtype__))
            if depth_mm is not None:
                dh, dw = depth_mm.shape
                raw = np.ascontiguousarray(depth_mm, "<u2").view(np.uint8).reshape(-1)
                msg = Image(header=header, height=dh, width=dw, encoding="16UC1",
                            is_bigendian=0, step=2 * dw, data=raw)  # fmt: skip
                writer.write(depth_conn, t, ts.serialize_cdr(msg, Image.__msgtype__))
            if camera is None:
                fx = fy = 0.8 * w
                cx, cy = w / 2, h / 2
            else:
                fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
            info = CameraInfo(
                header=header, height=h, width=w, distortion_model="plumb_bob",
                d=np.zeros(5), k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1.0]),
                r=np.eye(3).reshape(-1), p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0.0]),
                binning_x=0, binning_y=0,
                roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
            )  # fmt: skip
            writer.write(info_conn, t, ts.serialize_cdr(info, CameraInfo.__msgtype__))


def _rgbd_coco_header(seed: int) -> dict[str, Any]:
    from mobius_core.data.rgbd import RGBD_CATEGORIES

    return {
        "info": {"description": f"MOBIUS synthetic RGB-D solids (rgbd_scenes), seed {seed}"},
        "licenses": [],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(RGBD_CATEGORIES)],
        "images": [],
        "annotations": [],
    }


def _rgbd_items(coco: dict[str, Any], frames: int, seed: int, size: tuple[int, int]):
    """(record, RGB, depth mm, intrinsics) per scene, filling ``coco`` as it goes: visible
    objects only, masks as COCO RLE, each with its 3D ground truth (``center_3d``,
    ``box3d``, ``distance``, ``visible_fraction``)."""
    from mobius_core.data.rgbd import rgbd_scenes, scene_annotations

    cat_id = {c["name"]: c["id"] for c in coco["categories"]}
    for k, scene in enumerate(rgbd_scenes(frames, seed, (int(size[0]), int(size[1])))):
        h, w = scene.image.shape[:2]
        record = {"id": k + 1, "file_name": f"rgbd_{k + 1:06d}", "height": h, "width": w}
        coco["images"].append(record)
        anns, gt3d = scene_annotations(scene, record["id"], len(coco["annotations"]) + 1, cat_id)
        for a in anns:
            g = gt3d[str(a["id"])]
            a.update(center_3d=g["center"], box3d=g["box3d"], distance=g["distance"],
                     visible_fraction=g["visible_fraction"])  # fmt: skip
        coco["annotations"] += anns
        yield record, scene.image, scene.depth_mm, scene.camera


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
    listed: int = 0  # messages the bag's metadata lists on the topic (0: not known)
    unread_bytes: int = 0  # bytes of damaged storage files that could not be read
    damage: list[str] = field(default_factory=list)  # where and why reading stopped early
    problems: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def bag_topics(bag: str | Path) -> dict[str, str]:
    """topic -> message type of a bag; ValueError naming the problem if it cannot be read.
    A bag that rosbags cannot open (a storage file cut short, no metadata.yaml because the
    recorder was killed) is listed from its metadata.yaml or by scanning its files."""
    from rosbags.rosbag2 import Reader

    try:
        with Reader(bag) as reader:
            return {c.topic: c.msgtype for c in reader.connections}
    except Exception as exc:  # rosbags raises its own types for every kind of bad file
        topics = _salvage_topics(Path(bag))
        if topics:
            return topics
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


def _open_reader(bag: str | Path):
    """An open rosbags Reader, or None where rosbags cannot open the bag."""
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(bag)
        reader.open()
    except Exception:  # rosbags raises its own types for every kind of bad file
        return None
    return reader


def _rosbags_messages(reader, topic: str, report: ReadReport):
    """(msgtype, bag time, raw) of ``topic``; a chunk that cannot be read ends the bag."""
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        report.listed = sum(int(getattr(c, "msgcount", 0) or 0) for c in conns)
        iterator = reader.messages(connections=conns)
        while True:
            try:
                conn, t, raw = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # a corrupt chunk: note it and stop reading this bag
                report.skipped_corrupt += 1
                report.damage.append(f"reading stopped at a corrupt chunk: {exc}")
                report.note(
                    f"reading stopped at a corrupt chunk after {report.frames} frames: {exc}"
                )
                return
            yield conn.msgtype, t, raw
    finally:
        reader.close()


@dataclass
class BagMessage:
    """One message of a topic as :func:`read_messages` yields it."""

    index: int  # position among the messages of its topic that were read
    timestamp_ns: int  # the bag's receive time
    stamp_ns: int  # header stamp
    msgtype: str
    raw: bytes  # CDR, as recorded (``rclpy.serialization.deserialize_message`` reads it)
    msg: Any  # deserialised by rosbags
    value: Any = None  # what ``convert`` made of it


def read_messages(
    bag: str | Path, topic: str, report: ReadReport, msgtypes: tuple[str, ...] | None = None,
    convert=None, what: str = "a message of the expected type",
) -> Iterator[BagMessage]:  # fmt: skip
    """The messages of ``topic`` in bag order, deserialised; problems go to ``report``.
    ``msgtypes``: the types taken (others are skipped, counted and noted as not ``what``);
    ``convert(msgtype, msg)`` fills ``value`` (a ValueError, ImageError, ... skips the
    message as corrupt). A bag rosbags cannot open (cut short, corrupt, no metadata.yaml)
    is read up to the damage, which ``report.damage`` describes; ValueError naming the
    file and the damage only when not one message of ``topic`` can be read from it."""
    check_topic(bag, topic)
    ts = typestore()
    last = -1
    reader = _open_reader(bag)
    salvaged = reader is None
    if salvaged:
        messages = _salvage_messages(Path(bag), topic, report)
    else:
        messages = _rosbags_messages(reader, topic, report)
    seen = 0
    for msgtype, t, raw in messages:
        seen += 1
        if msgtypes is not None and msgtype not in msgtypes:
            report.skipped_type += 1
            report.note(f"{msgtype} on {topic} at {t}: not {what}, skipped")
            continue
        try:
            msg = ts.deserialize_cdr(raw, msgtype)
            value = convert(msgtype, msg) if convert is not None else None
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        except (ImageError, ValueError, AssertionError, IndexError, KeyError,
                AttributeError) as exc:  # fmt: skip
            report.skipped_corrupt += 1
            report.note(f"message at {t} cannot be used: {exc}")
            continue
        if stamp < last:
            report.out_of_order += 1
            report.note(f"header stamp {stamp} at {t} is older than the message before")
        last = max(last, stamp)
        yield BagMessage(report.frames, t, stamp, msgtype, bytes(raw), msg, value)
        report.frames += 1
    if report.listed and seen < report.listed:  # records lost to the damage
        lost = report.listed - seen
        report.skipped_corrupt += lost
        text = (f"the bag lists {report.listed} messages on {topic} but only {seen} could "
                f"be read: {lost} lost to a corrupt or missing part of the file")  # fmt: skip
        report.note(text)
        if not salvaged:  # rosbags read it without complaint: say where they went
            report.damage.append(text)
    if salvaged and seen == 0:
        raise ValueError(
            f"cannot read any message of {topic} from {bag}: "
            + ("; ".join(report.damage) or "the bag's storage files cannot be read")
        )


def _image_rgb(msgtype: str, msg: Any) -> np.ndarray:
    if msgtype.endswith("CompressedImage"):
        return compressed_to_rgb(msg.format, bytes(msg.data))
    return image_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                        np.asarray(msg.data).tobytes())  # fmt: skip


def read_frames(bag: str | Path, topic: str, report: ReadReport) -> Iterator[Frame]:
    """The images on ``topic`` in bag order (:func:`read_messages`, decoded to RGB)."""
    for m in read_messages(bag, topic, report, IMAGE_TYPES, _image_rgb, "an image"):
        yield Frame(m.index, m.timestamp_ns, m.stamp_ns, m.value)


# Reading damaged bags. rosbags refuses an MCAP file without its footer (cut short, or
# never closed) and a SQLite file shorter than its header says; these read what is there.

MCAP_MAGIC = b"\x89MCAP0\r\n"


def _bag_metadata(bag: Path) -> dict[str, Any] | None:
    """``rosbag2_bagfile_information`` of ``bag/metadata.yaml``; None if absent or bad."""
    import yaml

    try:
        info = yaml.safe_load((bag / "metadata.yaml").read_text())
        info = info["rosbag2_bagfile_information"]
        return info if isinstance(info, dict) else None
    except Exception:  # missing, unreadable or not a rosbag2 metadata file
        return None


def _storage_files(bag: Path) -> list[Path]:
    if bag.is_file():
        return [bag]
    meta = _bag_metadata(bag)
    if meta and meta.get("relative_file_paths"):
        named = [bag / Path(str(p)).name for p in meta["relative_file_paths"]]
        return [p for p in named if p.is_file()]
    return sorted(p for p in bag.glob("*") if p.suffix in (".mcap", ".db3"))


def _salvage_topics(bag: Path) -> dict[str, str]:
    meta = _bag_metadata(bag) if bag.is_dir() else None
    if meta:
        try:
            return {t["topic_metadata"]["name"]: t["topic_metadata"]["type"]
                    for t in meta["topics_with_message_count"]}  # fmt: skip
        except (KeyError, TypeError):
            pass
    topics: dict[str, str] = {}
    for path in _storage_files(bag) if bag.exists() else []:
        topics.update(_file_topics(path))
    return topics


def _file_topics(path: Path) -> dict[str, str]:
    if path.suffix == ".db3":
        try:
            con = _open_db3(path)
            return {name: msgtype for name, msgtype in con.execute("SELECT name, type FROM topics")}
        except sqlite3.DatabaseError:
            return {}
    found: dict[str, str] = {}
    for kind, a, b, _, _ in _mcap_records(path, []):
        if kind == "channel":
            found[a] = b
    return found


def _salvage_messages(bag: Path, topic: str, report: ReadReport):
    """(msgtype, bag time, raw) of ``topic`` from every storage file, in file order, each up
    to its damage; what was lost goes to ``report``."""
    meta = _bag_metadata(bag) if bag.is_dir() else None
    total = None  # rows of a single-file SQLite bag, from its metadata
    if meta:
        for t in meta.get("topics_with_message_count") or []:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if t["topic_metadata"]["name"] == topic:
                    report.listed += int(t["message_count"])
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if len(meta["relative_file_paths"]) == 1:
                total = int(meta["message_count"])
    files = _storage_files(bag)
    if not files:
        report.damage.append(f"{bag} holds no storage file (.mcap or .db3) that exists")
    for path in files:
        damage: list[tuple[int, int, str]] = []  # (offset read up to, file size, why)
        if path.suffix == ".db3":
            yield from _db3_messages(path, topic, damage, total)
        else:
            for kind, name, msgtype, t, raw in _mcap_records(path, damage):
                if kind == "message" and name == topic:
                    yield msgtype, t, raw
        for offset, size, why in damage:
            unread = max(0, size - offset)
            report.unread_bytes += unread
            text = f"{path}: {why}"
            if unread:
                text += (f"; read up to byte {offset} of {size}, {unread} bytes "
                         f"({100 * unread / max(size, 1):.0f} %) unread")  # fmt: skip
            report.damage.append(text)
            report.note(text)


def _mcap_records(path: Path, damage: list[tuple[int, int, str]]):
    """("channel", topic, msgtype, 0, b"") and ("message", topic, msgtype, log time, data)
    of an MCAP file in file order, up to the first record that is cut short or invalid
    (noted in ``damage``). Chunks are decompressed; a chunk cut short is read as far as it
    goes when it is not compressed (rosbags and rosbag2 write uncompressed chunks unless
    asked)."""
    size = path.stat().st_size
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    with open(path, "rb") as f:
        if f.read(8) != MCAP_MAGIC:
            damage.append((0, size, "not an MCAP file (its first bytes are not the MCAP magic)"))
            return
        pos = 8
        while True:
            head = f.read(9)
            if len(head) < 9:
                damage.append((pos, size, "the file ends without the MCAP footer: cut short"))
                return
            op, length = head[0], int.from_bytes(head[1:], "little")
            body = f.read(min(length, size))
            if op == 0 or len(body) < length:
                why = (f"record 0x{op:02x} at byte {pos} needs {length} bytes, {len(body)} "
                       "remain: the file is cut short or corrupt here")  # fmt: skip
                read = 0
                if op == 0x06:  # a chunk cut short: the records it holds so far
                    with contextlib.suppress(Exception):
                        read = yield from _chunk_records(body, schemas, channels, partial=True)
                reached = pos + 9 + read if read else pos
                damage.append((reached, size, why if op else f"invalid record at byte {pos}"))
                return
            if op in (0x02, 0x0F):  # footer, data end: every message was read
                return
            if op == 0x06:
                try:
                    yield from _chunk_records(body, schemas, channels, partial=False)
                except Exception as exc:  # bad compression or size; the next chunk may do
                    damage.append((pos, pos, f"chunk at byte {pos} skipped: {exc}"))
            else:
                yield from _record(op, body, schemas, channels)
            pos += 9 + length


def _chunk_records(body: bytes, schemas, channels, partial: bool):
    """The records of a chunk; returns how many bytes of ``body`` the records read cover
    (0 for a compressed chunk, whose bytes do not map to the file's)."""
    # chunk: start time, end time, uncompressed size (u64), crc (u32), compression, records
    usize = int.from_bytes(body[16:24], "little")
    crc = int.from_bytes(body[24:28], "little")
    n = int.from_bytes(body[28:32], "little")
    compression = body[32 : 32 + n].decode(errors="replace")
    start = 32 + n + 8
    data = body[start:]
    if compression and partial:
        return 0  # a compressed stream cut short: not worth the guessing
    if not partial:  # rosbags' own check of size and checksum, and its decompressors
        from rosbags.rosbag2.storage_mcap import decompress

        data = decompress(data, compression, usize, crc)
    pos = 0
    while pos + 9 <= len(data):
        op, length = data[pos], int.from_bytes(data[pos + 1 : pos + 9], "little")
        if op == 0 or pos + 9 + length > len(data):
            break
        yield from _record(op, data[pos + 9 : pos + 9 + length], schemas, channels)
        pos += 9 + length
    return 0 if compression else start + pos


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    n = int.from_bytes(buf[pos : pos + 4], "little")
    return buf[pos + 4 : pos + 4 + n].decode(errors="replace"), pos + 4 + n


def _record(op: int, body: bytes, schemas, channels):
    if op == 0x03:  # schema: id, name, encoding, data
        schemas[int.from_bytes(body[:2], "little")] = _string(body, 2)[0]
    elif op == 0x04:  # channel: id, schema id, topic, message encoding, metadata
        cid, sid = int.from_bytes(body[:2], "little"), int.from_bytes(body[2:4], "little")
        topic = _string(body, 4)[0]
        channels[cid] = (topic, schemas.get(sid, ""))
        yield "channel", topic, schemas.get(sid, ""), 0, b""
    elif op == 0x05 and len(body) >= 22:  # message: channel, sequence, log time, publish time
        channel = channels.get(int.from_bytes(body[:2], "little"))
        if channel is not None:
            yield "message", *channel, int.from_bytes(body[6:14], "little"), body[22:]


def _open_db3(path: Path) -> sqlite3.Connection:
    """Read-only, without the lock files, and reading a file that is shorter than its
    header says (cut short) instead of refusing it: what is there can still be read."""
    con = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    con.execute("PRAGMA writable_schema=ON")  # the connection is read-only all the same
    return con


def _db3_messages(path: Path, topic: str, damage: list[tuple[int, int, str]],
                  total: int | None = None):  # fmt: skip
    """(msgtype, time, raw) of ``topic`` from a rosbag2 SQLite file, row by row, so rows in
    the intact part are read even where the pages of others are missing. Rows are numbered
    1..N; N is ``max(id)``, else ``total`` (from metadata.yaml), else rows are tried until
    1000 in a row fail.

    SQLite reads the pages past the end of a file cut short as zeros, so a row whose last
    pages were cut off would come back with zeros in place of its data. A copy padded with
    0xff to the size the header gives reads them as 0xff instead: a row is kept only where
    both give the same bytes."""
    import tempfile

    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(100)
    page = int.from_bytes(header[16:18], "big") if len(header) == 100 else 0
    declared = (page if page != 1 else 65536) * int.from_bytes(header[28:32], "big")
    cut = f"the file is {size} bytes, its header says {declared}: cut short" if (
        declared > size) else ""  # fmt: skip
    with contextlib.ExitStack() as stack:
        try:
            con = _open_db3(path)
            stack.callback(con.close)
            topics = {i: (name, msgtype) for i, name, msgtype
                      in con.execute("SELECT id, name, type FROM topics")}  # fmt: skip
        except sqlite3.DatabaseError as exc:
            damage.append((0, size, f"{cut or 'damaged'}; its table of topics cannot be read "
                                    f"({exc})"))  # fmt: skip
            return
        cons = [con]
        if cut:
            padded = Path(stack.enter_context(tempfile.TemporaryDirectory())) / path.name
            _padded_copy(path, padded, declared - size)
            cons.append(_open_db3(padded))
            stack.callback(cons[-1].close)
        try:
            bound = con.execute("SELECT max(id) FROM messages").fetchone()[0] or 0
        except sqlite3.DatabaseError:
            bound = total  # the pages holding the last rows are gone
        lost, misses, i, end = 0, 0, 0, 0
        while i < bound if bound is not None else misses < 1000:
            i += 1
            try:
                rows = [c.execute("SELECT topic_id, timestamp, data FROM messages WHERE id = ?",
                                  (i,)).fetchone() for c in cons]  # fmt: skip
            except sqlite3.DatabaseError:
                rows = [None, ()]
            if rows[0] is None and len(set(rows)) == 1:  # no such row (deleted)
                misses += 1
                continue
            if len(set(rows)) > 1:  # unreadable, or part of it lies in the missing bytes
                lost, misses = lost + 1, misses + 1
                continue
            misses, end = 0, i
            name, msgtype = topics.get(rows[0][0], ("", ""))
            if name == topic:
                yield msgtype, rows[0][1], bytes(rows[0][2])
    if bound is None:
        why = f"rows after row {end} cannot be read"
    else:
        why = f"{lost} of its {bound} rows cannot be read" if lost else ""
    if cut or why:  # for a file cut short: the bytes up to the size its header gives
        damage.append((size, max(size, declared), "; ".join(w for w in (cut, why) if w)))


def _padded_copy(src: Path, dst: Path, pad: int) -> None:
    import shutil

    shutil.copyfile(src, dst)
    with open(dst, "ab") as f:
        block = b"\xff" * 2**20
        while pad > 0:
            f.write(block[: min(pad, len(block))])
            pad -= len(block)


class BagRecorder:
    """Writes serialized messages the node published into ``path`` (a new rosbag2 folder,
    sqlite3 storage) as they come, so that however the writing process ends, ``kill -9``
    included, rosbags opens the bag with every message written before: each message is
    committed when it is written, and metadata.yaml is written (atomically) when the bag is
    opened, when a topic is added and then at most every ``metadata_every_s`` (its counts
    may lag; the messages are all in the file). rosbags' own writers keep an MCAP file's
    data in memory, and commit a SQLite file and write metadata.yaml, only when closed.

    The commits are not synced to disk (``PRAGMA synchronous=OFF``): a killed process loses
    nothing, a power cut may lose the last messages; closing (``__exit__``, which writes
    rosbags' final metadata) syncs everything."""

    def __init__(self, path: str | Path, metadata_every_s: float = 1.0) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import get_types_from_msg

        self.ts = typestore()
        folder = msg_dir()
        for name in MSG_NAMES:
            text = (folder / f"{name}.msg").read_text()
            self.ts.register(get_types_from_msg(text, f"mobius_ros/msg/{name}"))
        self.path = Path(path)
        self.writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.SQLITE3)
        self.connections: dict[str, Any] = {}
        self.count = 0
        self.metadata_every_s, self._metadata_due = metadata_every_s, 0.0

    def __enter__(self) -> BagRecorder:
        self.writer.open()
        self._db().execute("PRAGMA synchronous=OFF")
        self._commit(metadata=True)
        return self

    def write(self, topic: str, msgtype: str, timestamp_ns: int, cdr: bytes) -> None:
        new = topic not in self.connections
        if new:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        self.writer.write(self.connections[topic], timestamp_ns, cdr)
        self.count += 1
        self._commit(metadata=new or time.monotonic() >= self._metadata_due)

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self.writer.storage, "conn", None)  # rosbags' Sqlite3Writer
        if not isinstance(conn, sqlite3.Connection):
            raise RuntimeError(
                "this rosbags version's SQLite writer has no `conn` to commit each message "
                "with; install the rosbags version constraints.txt pins"
            )
        return conn

    def _commit(self, metadata: bool) -> None:
        self._db().commit()
        if metadata:
            atomic_write_bytes(self.path / "metadata.yaml", self._metadata().encode())
            self._metadata_due = time.monotonic() + self.metadata_every_s

    def _metadata(self) -> str:
        """metadata.yaml as rosbags writes it when it closes a bag, for the messages so far."""
        import yaml
        from rosbags.rosbag2.metadata import dump_qos_v9

        w = self.writer
        count = sum(w.counts.values())
        start, duration = w.min_timestamp, max(0, w.max_timestamp - w.min_timestamp)
        name = w.storage.path.name
        info = {
            "version": w.version, "storage_identifier": "sqlite3",
            "relative_file_paths": [name], "duration": {"nanoseconds": duration},
            "starting_time": {"nanoseconds_since_epoch": start}, "message_count": count,
            "topics_with_message_count": [
                {"topic_metadata": {"name": c.topic, "type": c.msgtype,
                                    "serialization_format": c.ext.serialization_format,
                                    "offered_qos_profiles": dump_qos_v9(c.ext.offered_qos_profiles),
                                    "type_description_hash": c.digest},
                 "message_count": w.counts[c.id]}
                for c in w.connections
            ],
            "compression_format": "", "compression_mode": "",
            "files": [{"path": name, "starting_time": {"nanoseconds_since_epoch": start},
                       "duration": {"nanoseconds": duration}, "message_count": count}],
            "custom_data": None, "ros_distro": "rosbags",
        }  # fmt: skip
        return yaml.safe_dump({"rosbag2_bagfile_information": info}, default_flow_style=False)

    def __exit__(self, *exc: object) -> None:
        self._db().execute("PRAGMA synchronous=FULL")  # the final commit is synced
        self.writer.close()
