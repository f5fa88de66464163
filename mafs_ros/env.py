"""Process environment for ROS 2: the robot's DDS set-up by default, a loopback one on request.

The entry points (``mafs-node``, ``ros2 run``/``ros2 launch``, ``mafs bag play``) leave DDS alone:
RMW, domain id, discovery range and Fast DDS profile are the robot's, so an rviz on the operator's
laptop or a driver on a second computer sees the node. A single-host opt-in (``--local``,
``MAFS_LOCAL_DDS=1``, ``local_only:=true`` in the launch files) applies ``configure_ros_env``'s
loopback defaults, which the demo, the benchmarks and the tests use directly.
Everything here must run before ``rclpy.init`` (rmw reads these at participant creation).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Mapping
from pathlib import Path

PACKAGE = "mafs_ros"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
LOCAL_FLAG, LOCAL_ENV = "--local", "MAFS_LOCAL_DDS"
SHM_PROFILE = "fastdds_shm.xml"
# What decides who this process can talk to; the entry points never set any of them (unless --local).
DDS_VARS = ("RMW_IMPLEMENTATION", "ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS",
            "ROS_LOCALHOST_ONLY", "FASTDDS_DEFAULT_PROFILES_FILE")


def share_dirs() -> list[Path]:
    """Candidate share/mafs_ros directories: the ament index first, then AMENT_PREFIX_PATH, then sys.prefix."""
    dirs: list[Path] = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(PACKAGE)))
    except (ImportError, LookupError, OSError, ValueError):  # not importable / not installed / no prefix path
        pass
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    dirs += [Path(p) / "share" / PACKAGE for p in [*prefixes, sys.prefix]]
    return dirs


def config_path(name: str) -> Path:
    """A file of ``config/``: the source tree (or a symlink install), else the installed share directory.

    After a plain ``colcon build`` this module lives in install/.../site-packages, far from config/,
    so the share directory found through the ament index is the one that exists.
    """
    local = PACKAGE_ROOT / "config" / name
    if local.exists():
        return local
    for share in share_dirs():
        if (share / "config" / name).exists():
            return share / "config" / name
    return local


def env_flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _spawn_children() -> None:
    # rclpy must never be forked after init (it deadlocks): children are spawned.
    if multiprocessing.get_start_method(allow_none=True) != "spawn":
        multiprocessing.set_start_method("spawn", force=True)


def configure_ros_env(domain_id: int | None = None, log_dir: str | Path | None = None) -> dict[str, str]:
    """Single-host DDS: loopback discovery, Fast DDS with the shared-memory profile; values already set win.

    For the demo, benchmarks, tests and ``--local``; never applied to a robot behind its back.
    """
    defaults = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(config_path(SHM_PROFILE)),
        "AMENT_PREFIX_PATH": sys.prefix,
    }
    if os.environ.get("ROS_DISTRO") == "humble":  # Humble predates ROS_AUTOMATIC_DISCOVERY_RANGE
        defaults["ROS_LOCALHOST_ONLY"] = "1"
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        defaults["ROS_LOG_DIR"] = str(log_dir)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if domain_id is not None:
        os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    _spawn_children()
    keys = [*defaults, "ROS_DOMAIN_ID"]
    return {k: os.environ[k] for k in keys if k in os.environ}


def split_local_flag(args: list[str]) -> tuple[list[str], bool]:
    """Remove ``--local`` from the program's own arguments (before ``--ros-args``)."""
    end = args.index("--ros-args") if "--ros-args" in args else len(args)
    own = args[:end]
    return [a for a in own if a != LOCAL_FLAG] + args[end:], LOCAL_FLAG in own


def configure_entry_point(local: bool = False) -> dict[str, str]:
    """What the entry points do before ``rclpy.init``: nothing to DDS unless ``local`` or MAFS_LOCAL_DDS=1."""
    if local or env_flag(LOCAL_ENV):
        os.environ[LOCAL_ENV] = "1"  # said in the start-up line; inherited by what this process starts
        configure_ros_env()
    else:
        _spawn_children()
    return {k: os.environ[k] for k in DDS_VARS if k in os.environ}


def describe_dds(rmw: str, domain_id: int, env: Mapping[str, str] | None = None) -> str:
    """One line for the start-up log: the DDS set-up in force and where it came from."""
    env = os.environ if env is None else env
    local = " (single-host: --local / MAFS_LOCAL_DDS)" if env_flag(LOCAL_ENV, env) else ""
    rmw_src = "" if env.get("RMW_IMPLEMENTATION") else " (default)"
    if env.get("ROS_DISTRO") == "humble":
        scope = "localhost only (ROS_LOCALHOST_ONLY=1)" if env_flag("ROS_LOCALHOST_ONLY", env) else "subnet (default)"
    else:
        scope = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") or "SUBNET (default)"
    peers = env.get("ROS_STATIC_PEERS")
    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE") if "fastrtps" in rmw else None
    profile_text = profile or ("none (middleware defaults)" if "fastrtps" in rmw else "n/a")
    return (f"DDS set-up{local}: RMW {rmw}{rmw_src}, ROS_DOMAIN_ID {domain_id}"
            f"{'' if env.get('ROS_DOMAIN_ID') else ' (default)'}, discovery range {scope}"
            f"{f', static peers {peers}' if peers else ''}, Fast DDS profile {profile_text}")


def unique_domain_id(seed: int | None = None) -> int:
    """A domain id in 1..200 derived from the pid, so parallel test processes do not meet."""
    return 1 + (os.getpid() if seed is None else seed) % 200
