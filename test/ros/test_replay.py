"""Bags and replay: a generated bag through the real node, and bags with problems."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobius_ros.bags import (
    IMAGE_TOPIC,
    BagRecorder,
    ReadReport,
    bag_topics,
    make_bag,
    read_frames,
    typestore,
)

DOMAIN = 20 + (os.getpid() + 30) % 60


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_make_bag_writes_frames_and_timestamped_ground_truth(tmp_path, storage):
    bag, gt_path = make_bag(tmp_path, "val", 4, size=(64, 80), fps=5.0, storage=storage)
    assert bag_topics(bag) == {IMAGE_TOPIC: "sensor_msgs/msg/Image",
                               "/camera/camera_info": "sensor_msgs/msg/CameraInfo"}  # fmt: skip
    report = ReadReport()
    frames = list(read_frames(bag, IMAGE_TOPIC, report))
    gt = json.loads(gt_path.read_text())
    assert len(frames) == 4 == len(gt["images"]) and report.frames == 4
    assert [f.stamp_ns for f in frames] == [im["timestamp_ns"] for im in gt["images"]]
    assert np.diff([f.stamp_ns for f in frames]).tolist() == [200_000_000] * 3
    assert frames[0].rgb.shape == (64, 80, 3)
    with pytest.raises(FileExistsError):
        make_bag(tmp_path, "val", 1)


def _messy_bag(path):
    """Images with a CameraInfo, a truncated image and an old stamp on the image topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = typestore()
    Image, Info = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/CameraInfo"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]

    def image(sec, data_len=None):
        data = np.full(8 * 6 * 3, 100, np.uint8)[:data_len]
        return Image(header=Header(stamp=Time(sec=sec, nanosec=0), frame_id="c"), height=6,
                     width=8, encoding="rgb8", is_bigendian=0, step=24, data=data)  # fmt: skip

    info = ts.types["sensor_msgs/msg/CameraInfo"]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_img = w.add_connection(IMAGE_TOPIC, Image.__msgtype__, typestore=ts)
        c_info = w.add_connection(IMAGE_TOPIC, Info.__msgtype__, typestore=ts)
        w.write(c_img, 1, ts.serialize_cdr(image(10), Image.__msgtype__))
        roi = ts.types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)  # fmt: skip
        msg = info(header=Header(stamp=Time(sec=11, nanosec=0), frame_id="c"), height=6, width=8,
                   distortion_model="", d=np.zeros(0), k=np.zeros(9), r=np.zeros(9),
                   p=np.zeros(12), binning_x=0, binning_y=0, roi=roi)  # fmt: skip
        w.write(c_info, 2, ts.serialize_cdr(msg, Info.__msgtype__))
        w.write(c_img, 3, ts.serialize_cdr(image(12, data_len=50), Image.__msgtype__))
        w.write(c_img, 4, ts.serialize_cdr(image(9), Image.__msgtype__))  # older stamp
        w.write(c_img, 5, ts.serialize_cdr(image(13), Image.__msgtype__))


def test_messy_bags_are_read_as_far_as_possible(tmp_path):
    _messy_bag(tmp_path / "messy")
    report = ReadReport()
    frames = list(read_frames(tmp_path / "messy", IMAGE_TOPIC, report))
    assert [f.stamp_ns // 10**9 for f in frames] == [10, 9, 13]
    assert report.skipped_type == 1 and report.skipped_corrupt == 1 and report.out_of_order == 1
    text = " ".join(report.problems)
    assert "CameraInfo" in text and "truncated" in text and "older" in text
    with pytest.raises(ValueError, match="not in"):
        list(read_frames(tmp_path / "messy", "/other", ReadReport()))
    with pytest.raises(ValueError, match="cannot open bag"):
        bag_topics(tmp_path / "nothing_here")


def test_a_corrupt_file_gives_a_clear_message(tmp_path):
    bag, _ = make_bag(tmp_path / "b", "val", 3, size=(32, 32))
    mcap = next(bag.glob("*.mcap"))
    data = bytearray(mcap.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 400] = b"\xff" * 400
    mcap.write_bytes(bytes(data))
    report = ReadReport()
    try:
        frames = list(read_frames(bag, IMAGE_TOPIC, report))
    except ValueError as exc:  # the index itself is gone: refused with the reason
        assert "cannot open bag" in str(exc)
    else:  # what could be read is returned, and the loss is reported
        assert len(frames) + report.skipped_corrupt == 3
        assert len(frames) < 3 and "corrupt" in " ".join(report.problems)


def _cut_copy(bag, dst, fraction):
    """A copy of ``bag`` whose storage file keeps only its first ``fraction``."""
    import shutil

    shutil.copytree(bag, dst)
    (f,) = [p for p in dst.iterdir() if p.suffix in (".mcap", ".db3")]
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize(
    "storage,size,frames,fraction",
    [("mcap", 320, 10, 0.5), ("mcap", 320, 10, 0.9), ("mcap", 64, 40, 0.5),
     ("sqlite3", 64, 40, 0.5), ("sqlite3", 64, 40, 0.9), ("sqlite3", 320, 10, 0.9)],
)  # fmt: skip
def test_truncated_bags_are_read_up_to_the_damage(tmp_path, storage, size, frames, fraction):
    """320x320 mcap frames fill several chunks, 64x64 ones a single chunk cut inside."""
    bag, _ = make_bag(tmp_path / "b", "val", frames, size=(size, size), storage=storage)
    intact = list(read_frames(bag, IMAGE_TOPIC, ReadReport()))
    cut = _cut_copy(bag, tmp_path / "cut", fraction)
    report = ReadReport()
    got = list(read_frames(cut, IMAGE_TOPIC, report))
    assert 0 < len(got) < frames, len(got)
    for a, b in zip(got, intact):  # the frames read are the first ones, whole
        assert a.stamp_ns == b.stamp_ns and np.array_equal(a.rgb, b.rgb)
    assert report.listed == frames and report.skipped_corrupt == frames - len(got)
    text = " ".join(report.damage)
    assert f"bag.{'db3' if storage == 'sqlite3' else 'mcap'}" in text and "cut short" in text
    assert "unread" in text and report.unread_bytes > 0


def test_a_truncated_compressed_mcap_keeps_its_whole_chunks(tmp_path):
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    ts = typestore()
    Image, Header = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    rng = np.random.default_rng(0)  # noise: zstd cannot shrink it, so chunks stay ~1 MB
    writer = Writer(tmp_path / "z", version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conn = writer.add_connection(IMAGE_TOPIC, Image.__msgtype__, typestore=ts)
        for k in range(12):
            msg = Image(header=Header(stamp=Time(sec=k, nanosec=0), frame_id="c"), height=320,
                        width=320, encoding="rgb8", is_bigendian=0, step=960,
                        data=rng.integers(0, 255, 320 * 320 * 3, dtype=np.uint8))  # fmt: skip
            writer.write(conn, k + 1, ts.serialize_cdr(msg, Image.__msgtype__))
    report = ReadReport()
    frames = list(read_frames(_cut_copy(tmp_path / "z", tmp_path / "cut", 0.9), IMAGE_TOPIC,
                              report))  # fmt: skip
    assert [f.stamp_ns // 10**9 for f in frames] == list(range(len(frames))) and frames
    assert report.skipped_corrupt == 12 - len(frames) > 0 and "cut short" in report.damage[0]


def test_a_truncated_bag_without_metadata_is_read_from_its_storage_file(tmp_path):
    """What a recorder killed before it closed the bag leaves: no metadata.yaml."""
    bag, _ = make_bag(tmp_path / "b", "val", 10, size=(64, 64))
    cut = _cut_copy(bag, tmp_path / "cut", 0.7)
    (cut / "metadata.yaml").unlink()
    assert bag_topics(cut)[IMAGE_TOPIC] == "sensor_msgs/msg/Image"
    report = ReadReport()
    assert 0 < len(list(read_frames(cut, IMAGE_TOPIC, report))) < 10
    assert "cut short" in " ".join(report.damage)


def test_a_sqlite_bag_with_nothing_readable_is_refused_naming_the_file_and_the_damage(tmp_path):
    """Cut in half, this bag has lost the pages that index its rows: not one frame can be
    read, and the error says which file and how it is damaged."""
    bag, _ = make_bag(tmp_path / "b", "val", 10, storage="sqlite3")
    cut = _cut_copy(bag, tmp_path / "cut", 0.5)
    with pytest.raises(ValueError, match=r"cut/bag\.db3.*cut short.*20 of its 20 rows"):
        list(read_frames(cut, IMAGE_TOPIC, ReadReport()))


def test_the_report_says_what_a_damaged_bag_lost_and_why(tmp_path):
    from mobius_ros.replay import _report, _write_page

    bag, _ = make_bag(tmp_path / "b", "val", 10, size=(64, 64))
    read = ReadReport()
    frames = list(read_frames(_cut_copy(bag, tmp_path / "cut", 0.5), IMAGE_TOPIC, read))
    report = _report({}, {}, [], [], read, None, ["a"], None, "complete", True)
    assert report["frames"] == len(frames) and report["frames_listed"] == 10
    assert report["skipped_corrupt"] == 10 - len(frames) > 0
    assert report["bag_unread_bytes"] == read.unread_bytes and report["bag_damage"] == read.damage
    _write_page(tmp_path, report)
    page = (tmp_path / "report.md").read_text()
    assert "The bag is damaged" in page and "cut short" in page and "bag.mcap" in page
    assert f"{10 - len(frames)} that are corrupt or lost" in page and "Partial" not in page


def test_recorder_leaves_a_readable_bag_when_interrupted(tmp_path):
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String  # noqa: F401  (rclpy messages serialize for the recorder)

    pytest.importorskip("mobius_ros.msg", reason="run `make ros`")
    from mobius_ros.msg import InstanceArray

    with contextlib.suppress(KeyboardInterrupt), BagRecorder(tmp_path / "out") as rec:
        for i in range(3):
            rec.write("/mobius/instances", "mobius_ros/msg/InstanceArray", i + 1,
                      serialize_message(InstanceArray(mode="category", prompts=["a"])))  # fmt: skip
        raise KeyboardInterrupt
    from rosbags.rosbag2 import Reader

    with Reader(tmp_path / "out") as reader:
        assert reader.message_count == 3


@pytest.mark.ros
def test_replay_through_the_node_matches_mobius_eval(tmp_path):
    pytest.importorskip("rclpy", reason="run `make ros`")
    pytest.importorskip("mobius_ros.msg", reason="run `make ros`")
    from mobius_core.cli import main as mobius
    from mobius_ros.replay import run_replay

    bag, gt = make_bag(tmp_path / "val", "val", 6)
    report = run_replay(bag, IMAGE_TOPIC, tmp_path / "out", None, None, gt, domain_id=DOMAIN)
    assert report["frames"] == report["published"] == report["outputs"] == 6
    assert report["dropped"] == 0 and report["fps"] > 0
    assert 0 < report["latency_p50_ms"] <= report["latency_p95_ms"] <= report["latency_max_ms"]
    assert len(report["per_frame"]) == 6 and all(f["kept_queries"] > 0 for f in report["per_frame"])
    for f in ("report.json", "report.md", "latency.png", "fps.png", "kept.png"):
        assert (tmp_path / "out" / f).is_file()
    assert bag_topics(tmp_path / "out" / "outputs") == {
        "/mobius/instances": "mobius_ros/msg/InstanceArray"
    }
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert (
            mobius(["eval", "shapes_tiny", "--synthetic", "val", "--num-images", "6", "--json"])
            == 0
        )
    ref = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert abs(report["mask_ap"] - ref["mask_ap"]) <= 1.0, (report["mask_ap"], ref["mask_ap"])
    assert report["gt_images"] == 6


def _installed(name: str) -> Path:
    exe = Path(sys.prefix) / "bin" / name
    if not exe.is_file():
        pytest.skip(f"{exe} is not installed; run `make install` and `make ros`")
    return exe


def _outside_env() -> dict[str, str]:
    """The environment for an installed command: no PYTHONPATH, so with a working directory
    outside the checkout nothing of the source tree is importable."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    return env


@pytest.mark.ros
def test_installed_replay_runs_outside_the_source_tree(tmp_path):
    """The console script pip installed, from another folder: the message definitions the
    recorder needs come from the install (share/mobius_ros/msg), not from the checkout."""
    exe = _installed("mobius-ros")
    pytest.importorskip("mobius_ros.msg", reason="run `make ros`")
    bag, gt = make_bag(tmp_path / "val", "val", 4)
    out = tmp_path / "out"
    r = subprocess.run([str(exe), "replay", str(bag), "--gt", str(gt), "--rate", "max",
                        "--out", str(out), "--domain-id", str(DOMAIN + 1)], cwd=tmp_path,
                       env=_outside_env(), capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["frames"] == report["outputs"] == 4 and report["mask_ap"] > 0
    from rosbags.rosbag2 import Reader

    with Reader(out / "outputs") as reader:
        assert sum(1 for _ in reader.messages()) == 4


def test_missing_message_definitions_are_named_with_the_fix(tmp_path, monkeypatch):
    from mobius_ros import bags

    assert (bags.msg_dir() / "InstanceArray.msg").is_file()
    monkeypatch.setattr(bags, "__file__", str(tmp_path / "pkg" / "bags.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"InstanceArray\.msg.*make ros"):
        bags.msg_dir()


# Interrupted replays. A process is "gone" when /proc has no entry for it or it is a zombie.

ROOT = Path(__file__).resolve().parents[2]


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _gone(pid: int) -> bool:
    return _proc_state(pid) in (None, "Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(d.name))
    return found


def _wait(what, seconds: float, step: float = 0.2) -> bool:
    """Poll ``what()`` until it is true or ``seconds`` pass (a generous limit, for waiting)."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(step)
    return bool(what())


def _bag_count(path) -> int:
    """Messages rosbags reads from the bag at ``path`` now; -1 if it cannot open it."""
    from rosbags.rosbag2 import Reader

    try:
        with Reader(path) as reader:
            return sum(1 for _ in reader.messages())
    except Exception:
        return -1


def _kill_all(pids) -> None:
    import signal

    for pid in pids:
        if not _gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_a_recorder_killed_with_sigkill_leaves_a_bag_rosbags_opens(tmp_path):
    """SIGKILL half-way through writing: every message written before is in the bag."""
    import signal

    pytest.importorskip("mobius_ros.msg", reason="run `make ros`")
    child = """if True:
        import sys, time
        from rclpy.serialization import serialize_message
        from mobius_ros.bags import BagRecorder
        from mobius_ros.msg import InstanceArray
        with BagRecorder(sys.argv[1]) as rec:
            for i in range(1000):
                msg = InstanceArray(mode="category", prompts=[f"p{i}"])
                rec.write("/mobius/instances", "mobius_ros/msg/InstanceArray", i + 1,
                          serialize_message(msg))
                print(i + 1, flush=True)
                time.sleep(0.05)
    """
    proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path / "out")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        written = 0
        while written < 5:
            written = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        _kill_all([proc.pid])
    assert proc.returncode == -signal.SIGKILL
    from mobius_ros.msg import InstanceArray
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    with Reader(tmp_path / "out") as reader:
        prompts = [deserialize_message(raw, InstanceArray).prompts[0]
                   for _, _, raw in reader.messages()]  # fmt: skip
    assert len(prompts) >= written and prompts[:written] == [f"p{i}" for i in range(written)]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_a_process_started_to_exit_with_its_parent_does_when_the_parent_is_killed(tmp_path):
    """lifetime.exit_with_parent, as the node runs it: SIGKILL to the parent ends the child."""
    import signal

    parent = """if True:
        import os, subprocess, sys
        child = "from mobius_ros.lifetime import exit_with_parent; exit_with_parent(); " \\
                "print('armed', flush=True); import time; time.sleep(600)"
        env = {**os.environ, "MOBIUS_EXIT_WITH_PARENT": str(os.getpid())}
        p = subprocess.Popen([sys.executable, "-c", child], env=env, start_new_session=True)
        print(p.pid, flush=True)
        p.wait()
    """
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    child = None
    try:
        child = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "armed"
        assert not _gone(child)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        assert _wait(lambda: _gone(child), 60), "the child outlived its parent"
    finally:
        _kill_all([proc.pid] + ([child] if child else []))


def _start_replay(tmp_path, domain: int):
    """``mobius-ros replay`` (this checkout) on a paced 40-frame bag (20 s at --rate 1.0),
    once it has recorded 3 results: (process, output folder, node pid)."""
    pytest.importorskip("rclpy", reason="run `make ros`")
    pytest.importorskip("mobius_ros.msg", reason="run `make ros`")
    bag, gt = make_bag(tmp_path / "val", "val", 40, size=(96, 128), fps=2.0)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mobius_ros.cli", "replay", str(bag), "--gt",
                             str(gt), "--rate", "1.0", "--out", str(out), "--domain-id",
                             str(domain)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    nodes: list[int] = []
    try:
        ok = _wait(lambda: proc.poll() is not None or _bag_count(out / "outputs") >= 3, 300)
        assert ok and proc.poll() is None, "the replay ended or recorded nothing: " + (
            "".join(proc.communicate(timeout=60)) if proc.poll() is not None else "(running)"
        )
        nodes = _children(proc.pid)
        assert len(nodes) == 1, nodes
    except BaseException:
        _kill_all([proc.pid, *nodes])
        raise
    return proc, out, nodes[0]


@pytest.mark.ros
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_replay_killed_with_sigkill_leaves_a_readable_bag_a_partial_report_and_no_node(tmp_path):
    import signal

    proc, out, node = _start_replay(tmp_path, DOMAIN + 2)
    try:
        seen = _bag_count(out / "outputs")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert _wait(lambda: _gone(node), 60), "the node outlived the replay"
    finally:
        _kill_all([proc.pid, node])
    from mobius_ros.msg import InstanceArray
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    with Reader(out / "outputs") as reader:
        results = [deserialize_message(raw, InstanceArray) for _, _, raw in reader.messages()]
    assert seen <= len(results) < 40
    assert all(r.prompts for r in results)
    report = json.loads((out / "report.json").read_text())
    assert report["partial"] and report["status"] == "running"
    assert report["frames_listed"] == 40 and report["outputs"] <= len(results)
    assert "Partial report" in (out / "report.md").read_text()


@pytest.mark.ros
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_replay_stopped_by_a_signal_exits_cleanly_with_a_partial_report(tmp_path, signame):
    """No traceback, exit status 128 + the signal, the node stopped, the bag closed and a
    report that says it is partial and how many frames were done."""
    import signal

    sig = signal.Signals[signame]
    proc, out, node = _start_replay(tmp_path, DOMAIN + 3 + (sig == signal.SIGINT))
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        _kill_all([proc.pid, node])
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"stopped by {signame}" in err, err
    assert _gone(node), "the replay ended before its node"
    report = json.loads((out / "report.json").read_text())
    assert report["partial"] and report["interrupted"] and report["signal"] == signame
    assert report["status"] == f"interrupted by {signame}"
    assert 3 <= report["outputs"] <= report["published"] < 40 == report["frames_listed"]
    assert report["mask_ap"] > 0 and report["ap_over"] == "frames with results"
    from rosbags.rosbag2 import Reader

    with Reader(out / "outputs") as reader:  # closed: rosbags' own metadata, all counted
        assert reader.message_count == sum(1 for _ in reader.messages()) >= report["outputs"]
    page = (out / "report.md").read_text()
    assert f"Partial report (interrupted by {signame}):** {report['outputs']} frames done" in page


@pytest.mark.ros
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_of_a_truncated_bag_reports_what_it_skipped(tmp_path, storage):
    """A bag cut at 90 % is replayed (it was refused whole, exit status 2) up to the damage."""
    pytest.importorskip("rclpy", reason="run `make ros`")
    pytest.importorskip("mobius_ros.msg", reason="run `make ros`")
    bag, gt = make_bag(tmp_path / "val", "val", 10, size=(64, 64), storage=storage)
    cut = _cut_copy(bag, tmp_path / "cut", 0.9)
    out = tmp_path / "out"
    domain = DOMAIN + 5 + (storage == "sqlite3")
    r = subprocess.run([sys.executable, "-m", "mobius_ros.cli", "replay", str(cut), "--gt",
                        str(gt), "--rate", "max", "--out", str(out), "--domain-id", str(domain)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    assert 0 < report["frames"] == report["outputs"] < 10 == report["frames_listed"]
    assert report["skipped_corrupt"] == 10 - report["frames"]
    assert "cut short" in " ".join(report["bag_damage"]) and not report["partial"]
    assert report["gt_images"] == report["frames"] and report["mask_ap"] > 0
