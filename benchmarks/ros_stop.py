"""Ctrl-C on `ros2 launch mobius_ros segment.launch.py`: exit code and seconds to exit.

    python benchmarks/ros_stop.py --runs 10 [--busy 3] [--domain-id 93]

Each run launches the node (the installed package), waits until `ros2 lifecycle get /mobius`
says active, optionally streams 640x480 frames at 15 Hz (busy), then sends SIGINT to the
launch's process group as a terminal's Ctrl-C does. It records the exit code of `ros2
launch`, when the node process was gone and when `ros2 launch` was, and whether the output
held "Traceback" or "[ERROR]". A baseline row launches a trivial Python child that exits at
once on SIGINT: the part of the time that is `ros2 launch`'s own. Needs the ros2 command line
and launch_ros (see the README).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mobius_ros.harness import Harness, launch_segment, ros2_cli, ros2_until
from mobius_ros.localenv import local_ros_env, use_local_ros_env

BASELINE = """from launch import LaunchDescription
from launch.actions import ExecuteProcess
CHILD = ("import signal, sys, time; "
         "signal.signal(signal.SIGINT, lambda *a: sys.exit(0)); time.sleep(600)")
def generate_launch_description():
    return LaunchDescription([ExecuteProcess(cmd=[{exe!r}, "-c", CHILD], output="screen")])
"""


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop(proc: subprocess.Popen, child: int | None) -> tuple[int, float, float]:
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    child_gone = None
    while proc.poll() is None and time.monotonic() - start < 30:
        if child_gone is None and child is not None and not _alive(child):
            child_gone = time.monotonic() - start
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
    total = time.monotonic() - start
    return code, child_gone if child_gone is not None else total, total


def run_node(domain: int, log: Path, busy: bool, client: Harness | None, frames) -> dict:
    proc = launch_segment({"image": "/image", "params_file": _params(log.parent)}, domain, log)
    out = ros2_until(["lifecycle", "get", "/mobius"], domain,
                     lambda o: o.startswith("active") or proc.poll() is not None, 240)  # fmt: skip
    if not out.startswith("active"):
        proc.kill()
        raise RuntimeError(f"the node did not become active:\n{log.read_text()[-2000:]}")
    child = (_children(proc.pid) or [None])[0]
    if busy:
        client.instances.clear()
        client.stream(frames, 15.0, 2.0, drain=0.0)
        if not client.instances:
            raise RuntimeError("no instances while busy")
    code, node_s, total_s = _stop(proc, child)
    text = log.read_text()
    return {"code": code, "node_s": node_s, "launch_s": total_s,
            "clean": "Traceback" not in text and "[ERROR]" not in text}  # fmt: skip


def _params(folder: Path) -> str:
    path = folder / "params.yaml"
    path.write_text("/**:\n  ros__parameters:\n    threads: 1\n")
    return str(path)


def run_baseline(domain: int, folder: Path) -> dict:
    launch = folder / "baseline.launch.py"
    launch.write_text(BASELINE.format(exe=sys.executable))
    log = folder / "baseline.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(ros2_cli()), "launch", str(launch)], stdout=f,
                                stderr=subprocess.STDOUT, env=local_ros_env(domain),
                                start_new_session=True)  # fmt: skip
    time.sleep(4.0)
    child = (_children(proc.pid) or [None])[0]
    code, child_s, total_s = _stop(proc, child)
    return {"code": code, "node_s": child_s, "launch_s": total_s, "clean": True}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="idle runs")
    ap.add_argument("--busy", type=int, default=3, help="runs with frames flowing")
    ap.add_argument("--domain-id", type=int, default=93)
    args = ap.parse_args()
    if ros2_cli() is None:
        print("needs the ros2 command line and launch_ros (see the README)", file=sys.stderr)
        return 2
    use_local_ros_env(args.domain_id)
    import rclpy

    from mobius_ros.camera import demo_frames

    rclpy.init()
    client = Harness("mobius_stop_bench")
    frames = demo_frames(3, (480, 640))
    rows: dict[str, list[dict]] = {"baseline (trivial child)": [], "idle": [], "busy": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for _ in range(3):
            rows["baseline (trivial child)"].append(run_baseline(args.domain_id, folder))
        for kind, n in (("idle", args.runs), ("busy", args.busy)):
            for i in range(n):
                r = run_node(args.domain_id, folder / f"{kind}{i}.log", kind == "busy",
                             client, frames)  # fmt: skip
                rows[kind].append(r)
                print(f"{kind} {i + 1}/{n}: rc {r['code']}, node gone {r['node_s']:.2f} s, "
                      f"launch gone {r['launch_s']:.2f} s, clean {r['clean']}",
                      flush=True)  # fmt: skip
    client.close()
    rclpy.shutdown()
    print("\n| case | runs | rc 0 | clean output | child gone p50 / max (s) "
          "| ros2 launch gone p50 / max (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for kind, rs in rows.items():
        if not rs:
            continue
        node = [r["node_s"] for r in rs]
        total = [r["launch_s"] for r in rs]
        print(f"| {kind} | {len(rs)} | {sum(r['code'] == 0 for r in rs)} | "
              f"{sum(r['clean'] for r in rs)} | {statistics.median(node):.2f} / {max(node):.2f} "
              f"| {statistics.median(total):.2f} / {max(total):.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
