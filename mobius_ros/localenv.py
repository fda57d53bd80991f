"""Environment for ROS tools that must stay on this machine (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def config_dir() -> Path:
    """config/ of the source tree, else share/mobius_ros/config of the install."""
    src = Path(__file__).resolve().parents[1] / "config"
    if (src / "segment.yaml").is_file():
        return src
    installed = Path(sys.prefix) / "share" / "mobius_ros" / "config"  # the venv install
    if (installed / "segment.yaml").is_file():
        return installed
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("mobius_ros")) / "config"


def local_ros_env(domain_id: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default os.environ) with discovery limited to localhost, its own domain, the
    shared-memory Fast DDS profile and the venv as ament prefix."""
    if not 0 <= domain_id <= 101:
        raise ValueError(
            f"ROS_DOMAIN_ID {domain_id} is outside 0..101; larger ids map to ports in Linux's "
            "ephemeral range, where traffic can be lost"
        )
    out = dict(os.environ if env is None else env)
    out["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    out["ROS_DOMAIN_ID"] = str(int(domain_id))
    out.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    out.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    out["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config_dir() / "fastdds_local.xml")
    return out


def use_local_ros_env(domain_id: int) -> None:
    """Apply :func:`local_ros_env` to this process (before rclpy.init)."""
    os.environ.update(local_ros_env(domain_id))
