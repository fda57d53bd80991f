"""``mobius-ros``: the node, a demo camera, and the end-to-end demo.

mobius-ros node [--ros-args -p prompts:="['forklift','pallet']" -r image:=/camera/image_raw]
mobius-ros camera [--rate 15] [--ros-args ...]
mobius-ros demo [--out demo_out] [--seconds 10] [--rgbd]
mobius-ros bundle [--config shapes_tiny] [--size N] [--no-visual]
  (export the shipped model's ONNX bundle into the cache once, so the node starts
  without torch; as `python -m mobius_core.bundle`)
mobius-ros make-bag --out DIR [--frames 20] [--storage mcap|sqlite3] [--rgbd]
  (--rgbd: the synthetic RGB-D world at 640x480 with /camera/depth/image_raw and the
  scenes' intrinsics, and 3D ground truth per annotation)
mobius-ros replay BAG [--gt gt.json] [--rate 1.0|max] [--out replay_out]
  [--depth-topic auto|TOPIC|none] [--camera-info-topic /camera/camera_info]
  (with a depth topic the node runs with use_depth; with 3D ground truth the report
  gains a "3d" section)
  (exit status: 0 done, 2 refused with the reason, 130/143 stopped by SIGINT/SIGTERM
  with a partial report)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .lifetime import exit_with_parent


def ros_environment() -> None:
    """Defaults that let the PyPI ROS 2 wheels find their own files in this environment."""
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)


def _exit_now(code: int) -> int:
    """End the process once the node has shut down cleanly: run the exit handlers, flush,
    and skip the interpreter's teardown of torch and onnxruntime (about 3 s here), so that
    SIGINT from `ros2 launch` ends the node well within its 2 s budget."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_environment()
    if argv and argv[0] == "node":
        import signal

        # Until the node's own handlers are in (importing torch and onnxruntime takes
        # seconds), Ctrl-C or SIGTERM ends the process at once: nothing is open yet.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: os._exit(0))
        exit_with_parent()
        from .node import run

        return _exit_now(run(["mobius-ros", *argv[1:]]))
    if argv and argv[0] == "bundle":
        from mobius_core.bundle import main as bundle_main

        return bundle_main(argv[1:], prog="mobius-ros bundle")
    parser = argparse.ArgumentParser(
        prog="mobius-ros",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("node", help="run the segmentation node (takes --ros-args)")
    sub.add_parser("bundle", help="export the shipped model's ONNX bundle into the cache")
    cam = sub.add_parser("camera", help="publish synthetic scenes on `image`")
    cam.add_argument("--rate", type=float, default=15.0)
    cam.add_argument("--topic", default="image")
    cam.add_argument("--width", type=int, default=640)
    cam.add_argument("--height", type=int, default=480)
    demo = sub.add_parser("demo", help="node + demo camera + one prompt change -> report")
    demo.add_argument("--out", type=Path, default=Path("demo_out"))
    demo.add_argument("--seconds", type=float, default=10.0, help="per prompt set")
    demo.add_argument("--rate", type=float, default=15.0, help="camera rate (Hz)")
    demo.add_argument(
        "--domain-id", type=int, default=None, help="ROS_DOMAIN_ID, 0..101 (default: from the pid)"
    )
    demo.add_argument("--backend", default="onnxruntime")
    demo.add_argument("--rgbd", action="store_true",
                      help="RGB-D scenes with use_depth: 3D positions in the report")  # fmt: skip
    bag = sub.add_parser("make-bag", help="write a synthetic-benchmark bag + gt.json")
    bag.add_argument("--split", default="val", choices=["train", "val", "val_unseen"])
    bag.add_argument("--frames", type=int, default=20)
    bag.add_argument("--seed", type=int, default=0)
    bag.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="default 320 320, with --rgbd 480 640",
    )
    bag.add_argument("--fps", type=float, default=10.0, help="recorded frame rate")
    bag.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    bag.add_argument("--out", type=Path, required=True)
    bag.add_argument(
        "--rgbd",
        action="store_true",
        help="RGB-D scenes (rgbd_scenes) with depth and 3D ground truth",
    )
    rep = sub.add_parser("replay", help="replay a bag through the node and report")
    rep.add_argument("bag", type=Path)
    rep.add_argument("--image-topic", default="/camera/image_raw")
    rep.add_argument("--rate", default="1.0", help="multiple of the recorded rate, or max")
    rep.add_argument("--prompts", default="", help="comma-separated (default: --gt's names)")
    rep.add_argument("--gt", type=Path, default=None, help="COCO json with timestamp_ns")
    rep.add_argument("--out", type=Path, default=Path("replay_out"))
    rep.add_argument("--target-fps", type=float, default=0.0)
    rep.add_argument("--domain-id", type=int, default=None)
    rep.add_argument(
        "--depth-topic",
        default="auto",
        help="registered depth image topic; auto: /camera/depth/image_raw where the "
        "bag has it; none: 2D only",
    )
    rep.add_argument("--camera-info-topic", default="/camera/camera_info")
    args, ros_args = parser.parse_known_args(argv)
    if args.cmd == "camera":
        return _camera(args, ros_args)
    if args.cmd == "make-bag":
        from .bags import make_bag

        try:
            size = tuple(args.size) if args.size else None
            bag_path, gt = make_bag(args.out, args.split, args.frames, args.seed, size,
                                    args.fps, args.storage, rgbd=args.rgbd)  # fmt: skip
        except (ValueError, FileExistsError) as exc:
            print(f"mobius-ros make-bag: {exc}", file=sys.stderr)
            return 2
        topics = "/camera/image_raw" + (", /camera/depth/image_raw" if args.rgbd else "")
        print(
            f"bag: {bag_path} ({args.frames} frames on {topics}, /camera/camera_info); "
            f"ground truth: {gt}"
        )
        return 0
    if args.cmd == "replay":
        import signal

        from .replay import parse_rate, run_replay

        def progress(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        try:
            prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
            report = run_replay(args.bag, args.image_topic, args.out, parse_rate(args.rate),
                                prompts, args.gt, {"target_fps": str(args.target_fps)},
                                args.domain_id, progress=progress,
                                depth_topic=args.depth_topic,
                                info_topic=args.camera_info_topic)  # fmt: skip
        except (ValueError, OSError, RuntimeError) as exc:
            print(f"mobius-ros replay: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C before the node was started: nothing to stop
            print("mobius-ros replay: interrupted before the replay began", file=sys.stderr)
            return 128 + int(signal.SIGINT)
        keys = ("frames", "outputs", "dropped", "fps", "latency_p50_ms", "latency_p95_ms",
                "mask_ap", "3d")  # fmt: skip
        print(json.dumps({k: report[k] for k in keys if k in report}))
        print(f"report: {args.out / 'report.md'}")
        if report["interrupted"]:  # exit status 128 + the signal, as a shell reports it
            total = f" of {report['frames_listed']}" if report["frames_listed"] else ""
            print(f"mobius-ros replay: stopped by {report['signal']} after {report['outputs']}"
                  f"{total} frames; the report and {args.out / 'outputs'} cover those",
                  file=sys.stderr)  # fmt: skip
            return 128 + int(signal.Signals[report["signal"]])
        return 0
    if args.rgbd:
        from .demo import run_rgbd_demo

        return run_rgbd_demo(args.out, domain_id=args.domain_id)
    from .demo import run_demo

    return run_demo(args.out, args.seconds, args.rate, args.domain_id, args.backend)


def _camera(args: argparse.Namespace, ros_args: list[str]) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from .camera import demo_frames, run_camera

    rclpy.init(args=["mobius-camera", *ros_args])
    node = rclpy.create_node("mobius_demo_camera")
    pub = run_camera(node, args.topic, args.rate, demo_frames(size=(args.height, args.width)))
    start = time.monotonic()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        elapsed = time.monotonic() - start
        print(f"camera: {pub.published} frames in {elapsed:.1f} s "
              f"({pub.published / max(elapsed, 1e-9):.1f} Hz)", flush=True)  # fmt: skip
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
