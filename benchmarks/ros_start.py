"""Start-up and memory of the default node with a warm cache: a process, timed from outside.

    python benchmarks/ros_start.py [--runs 5] [--frames 100] [--rate 10]
                                   [--exe .venv/bin/mobius-ros node] [--domain-id 95]

The shipped model's bundle is built first (``mobius-ros bundle``; a no-op when the cache
is warm), so each start finds it. Each run starts the default node (onnxruntime, the
shipped model, default parameters) with the installed console command, while this process
(its ROS participant up before the node starts) publishes a 640x480 rgb8 frame every 50 ms,
and records, from the moment the process was started:

- discoverable: the node (renamed per run, ``__node:=mobius_start_...``) is in the ROS graph;
- first result: the first InstanceArray arrives (discovery, model load, prompt encoding and
  the first inference included);

then streams ``--frames`` frames at ``--rate`` Hz, sampling the node's VmRSS from
``/proc/PID/status`` after every frame: steady RSS = the median over the second half of the
stream, peak = VmHWM at the end. ``torch mapped`` / ``timm mapped``: whether any file of
torch (libtorch*, torch/…) or timm is mapped into the node (``/proc/PID/maps``). The node is
stopped with SIGINT after each run. Rows: runs; last row: the median. ``uptime`` load before
and after is printed with the table (other work on the machine slows starts).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobius_ros.harness import Harness
from mobius_ros.localenv import local_ros_env, use_local_ros_env

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.prefix) / "bin"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def status(pid: int, key: str) -> float:
    """VmRSS / VmHWM of ``pid`` in MB (nan once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def mapped(pid: int, *needles: str) -> list[str]:
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return []
    files = {ln.split()[-1] for ln in lines if len(ln.split()) >= 6}
    return sorted(f for f in files if any(n in f for n in needles))


def _listed(h: Harness, node: str) -> bool:
    return any(name == node for name, _ in h.node.get_node_names_and_namespaces())


def one_start(h: Harness, exe: list[str], domain: int, frames, n: int, rate: float,
              log: Path) -> dict:  # fmt: skip
    h.instances.clear()
    # a name of its own per run: a stopped node can stay in the graph's view for a while
    node = f"mobius_start_{len(h.instances)}_{time.monotonic_ns() % 10**8}"
    with open(log, "w") as f:
        t0 = time.monotonic()
        cmd = [*exe, "--ros-args", "-r", f"__node:={node}"]
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=local_ros_env(domain), stdin=subprocess.DEVNULL)  # fmt: skip
    row: dict = {"pid": proc.pid}
    try:
        seen = first = None
        last_pub, i = 0.0, 0
        end = t0 + 180
        while time.monotonic() < end and first is None and proc.poll() is None:
            now = time.monotonic()
            if seen is None and _listed(h, node):
                seen = now - t0
            if now - last_pub >= 0.05:
                msg = h.image(frames[i % len(frames)])
                h.pub.publish(msg)
                last_pub, i = now, i + 1
            h.rclpy.spin_once(h.node, timeout_sec=0.005)
            if h.instances:
                first = min(t for t, _ in h.instances.values()) - t0
        if first is None:
            raise RuntimeError(f"no InstanceArray within 180 s:\n{log.read_text()[-3000:]}")
        row["discoverable_s"], row["first_result_s"] = seen if seen is not None else first, first
        rss = []
        h.instances.clear()
        start = time.monotonic()
        for k in range(n):
            h.pub.publish(h.image(frames[k % len(frames)]))
            h.spin(max(0.0, start + (k + 1) / rate - time.monotonic()))
            rss.append(status(proc.pid, "VmRSS"))
        h.spin(1.0)
        row["results"] = len(h.instances)
        row["steady_rss_mb"] = statistics.median(rss[len(rss) // 2 :])
        row["peak_rss_mb"] = status(proc.pid, "VmHWM")
        row["torch"] = bool(mapped(proc.pid, "libtorch", "/torch/", "torchvision"))
        row["timm"] = bool(mapped(proc.pid, "/timm/", "libtimm"))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0, help="Hz of the measured stream")
    p.add_argument("--exe", default=f"{VENV_BIN / 'mobius-ros'} node",
                   help="the node command (default: the installed console command)")  # fmt: skip
    p.add_argument("--domain-id", type=int, default=95)
    args = p.parse_args()
    exe = shlex.split(args.exe)
    prep = subprocess.run([str(VENV_BIN / "mobius-ros"), "bundle"], capture_output=True,
                          text=True)  # fmt: skip
    if prep.returncode != 0:
        print(prep.stderr, file=sys.stderr)
        return 1
    print(prep.stdout.strip())
    use_local_ros_env(args.domain_id)
    import rclpy

    from mobius_ros.camera import demo_frames

    frames = demo_frames(8, (480, 640))
    rclpy.init()
    h = Harness("mobius_start_bench", masks=False)
    log = Path(tempfile.mkdtemp()) / "node.log"
    load_before = load()
    rows = []
    try:
        for r in range(args.runs):
            rows.append(one_start(h, exe, args.domain_id, frames, args.frames, args.rate, log))
            print(f"run {r + 1}: {rows[-1]}", file=sys.stderr, flush=True)
            h.spin(1.0)  # let the old node leave the graph
    finally:
        h.close()
        rclpy.shutdown()
    load_after = load()
    print(f"\ncommand: {shlex.join(exe)}; MOBIUS_CACHE={os.environ.get('MOBIUS_CACHE', '')!r} "
          f"(warm); {args.frames} frames 640x480 rgb8 at {args.rate:g} Hz per run; "
          f"load average (1, 5, 15 min) before {load_before}, after {load_after}\n")  # fmt: skip
    print(
        "| run | discoverable (s) | first InstanceArray (s) | steady RSS (MB) | peak RSS "
        "(MB) | results | torch mapped | timm mapped |\n|---|---:|---:|---:|---:|---:|---|---|"
    )
    for i, row in enumerate(rows, 1):
        print(
            f"| {i} | {row['discoverable_s']:.2f} | {row['first_result_s']:.2f} | "
            f"{row['steady_rss_mb']:.0f} | {row['peak_rss_mb']:.0f} | {row['results']} | "
            f"{'yes' if row['torch'] else 'no'} | {'yes' if row['timm'] else 'no'} |"
        )
    med = {
        k: statistics.median(r[k] for r in rows)
        for k in ("discoverable_s", "first_result_s", "steady_rss_mb", "peak_rss_mb")
    }
    print(f"| **median** | **{med['discoverable_s']:.2f}** | **{med['first_result_s']:.2f}** | "
          f"**{med['steady_rss_mb']:.0f}** | **{med['peak_rss_mb']:.0f}** | | "
          f"{'yes' if any(r['torch'] for r in rows) else 'no'} | "
          f"{'yes' if any(r['timm'] for r in rows) else 'no'} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
