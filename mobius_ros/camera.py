"""A demo camera: publishes synthetic-benchmark scenes as sensor_msgs/Image (rgb8).

The frames are rendered once (deterministic by seed) and published in a loop at ``rate`` Hz,
so the camera itself costs almost nothing and never competes with the node for the CPU.
"""

from __future__ import annotations

import numpy as np

from mobius_core.data.synthetic import SEEN_CATEGORIES, render_scene

from .conversions import rgb_to_image_fields


def demo_frames(count: int = 8, size: tuple[int, int] = (480, 640), seed: int = 0):
    """``count`` [H,W,3] uint8 scenes of the shapes the shipped model knows."""
    rng = np.random.default_rng(seed)
    return [render_scene(rng, SEEN_CATEGORIES, size=size, min_objects=3)[0] for _ in range(count)]


def run_camera(node, topic: str = "image", rate: float = 15.0, frames=None, frame_id="camera"):
    """Create a publisher on ``node`` and a timer that publishes ``frames`` in a loop.
    Returns the publisher (its ``published`` attribute counts messages)."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    frames = frames if frames is not None else demo_frames()
    fields = [rgb_to_image_fields(f) for f in frames]
    pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
    pub.published = 0

    def tick() -> None:
        h, w, step, data = fields[pub.published % len(fields)]
        msg = Image(height=h, width=w, encoding="rgb8", step=step, data=data)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = frame_id
        pub.publish(msg)
        pub.published += 1

    node.create_timer(1.0 / rate, tick)
    return pub
