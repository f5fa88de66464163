"""Process environment for ROS 2 on a pip install: loopback-only DDS with a shared-memory profile.

Every value is a default: anything already set in the environment wins, so a
robot's own ROS set-up (a ROS distribution, a site DDS profile) is left alone.
Must run before ``rclpy.init`` (rmw reads these at participant creation).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def config_path(name: str) -> Path:
    """A file of ``config/``: from the source tree, else the ament share directory."""
    local = PACKAGE_ROOT / "config" / name
    if local.exists():
        return local
    share = Path(sys.prefix) / "share" / "mafs_ros" / "config" / name
    return share if share.exists() else local


def configure_ros_env(domain_id: int | None = None, log_dir: str | Path | None = None) -> dict[str, str]:
    """Set DDS hygiene defaults; return the values in force."""
    defaults = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(config_path("fastdds_shm.xml")),
        "AMENT_PREFIX_PATH": sys.prefix,
    }
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        defaults["ROS_LOG_DIR"] = str(log_dir)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if domain_id is not None:
        os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    # rclpy must never be forked after init (it deadlocks): children are spawned.
    if multiprocessing.get_start_method(allow_none=True) != "spawn":
        multiprocessing.set_start_method("spawn", force=True)
    keys = [*defaults, "ROS_DOMAIN_ID"]
    return {k: os.environ[k] for k in keys if k in os.environ}


def unique_domain_id(seed: int | None = None) -> int:
    """A domain id in 1..200 derived from the pid, so parallel test processes do not meet."""
    return 1 + (os.getpid() if seed is None else seed) % 200
