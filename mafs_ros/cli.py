"""`mafs` entry point: the core commands plus those that need rclpy (bag play, demo)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mafs_core.cli import main as core_main

ROS_COMMANDS = ("mafs_ros.bag_play", "mafs_ros.demo")


def main(argv: Sequence[str] | None = None) -> int:
    return core_main(argv, extra_modules=ROS_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
