"""Where the shipped weights live: the source tree or an installed ROS/pip prefix."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_WEIGHTS = "mafs_t.safetensors"  # the CPU / embedded default, and the fallback everywhere
# Shipped weights per device type: the larger mafs_s where a GPU makes it cheap (docs/benchmarks.md).
DEVICE_DEFAULTS = {"cuda": "mafs_s.safetensors", "cpu": DEFAULT_WEIGHTS}
PACKAGE = "mafs_ros"


def weight_dirs() -> list[Path]:
    """Candidate folders: $MAFS_WEIGHTS_DIR alone when set (an explicit choice is not second-guessed),
    else the source tree, then install prefixes."""
    if os.environ.get("MAFS_WEIGHTS_DIR"):
        return [Path(os.environ["MAFS_WEIGHTS_DIR"])]
    dirs: list[Path] = []
    dirs.append(Path(__file__).resolve().parent.parent / "weights")  # checkout / editable install
    # installed by setup.py data_files: <prefix>/share/mafs_ros/weights (colcon puts prefixes on
    # AMENT_PREFIX_PATH; we read the variable rather than import ament_index_python to stay ROS-free)
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [sys.prefix, sys.base_prefix]
    for p in prefixes:
        d = Path(p) / "share" / PACKAGE / "weights"
        if d not in dirs:
            dirs.append(d)
    return dirs


def default_for_device(device: str = "cpu") -> tuple[Path, str]:
    """(shipped checkpoint, why) for a device type: mafs_s on CUDA, mafs_t on the CPU and anything else;
    mafs_t also where mafs_s is not installed, and the reason says so."""
    kind = str(device).split(":")[0]
    want = DEVICE_DEFAULTS.get(kind, DEFAULT_WEIGHTS)
    if want != DEFAULT_WEIGHTS:
        try:
            return default_checkpoint(want), f"default weights for {kind}"
        except FileNotFoundError:
            return default_checkpoint(), f"default weights for {kind} ({want} not installed, using {DEFAULT_WEIGHTS})"
    return default_checkpoint(), f"default weights for {kind}"


def default_checkpoint(name: str = DEFAULT_WEIGHTS) -> Path:
    """Path of a shipped checkpoint (`weights/mafs_t.safetensors`); FileNotFoundError says where it looked."""
    dirs = weight_dirs()
    for d in dirs:
        if (d / name).is_file():
            return d / name
    looked = "\n  ".join(str(d) for d in dirs)
    raise FileNotFoundError(
        f"default weights {name} not found. Looked in:\n  {looked}\n"
        "Train them with `mafs train`, pass --checkpoint PATH, set MAFS_WEIGHTS_DIR, "
        "or use --random-init for a smoke run without weights.")
