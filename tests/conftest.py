"""Test-wide environment: loopback DDS, one ROS domain per test process, logs in build/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mafs_ros.env import configure_ros_env, unique_domain_id

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MAFS_DATA_ROOT", REPO.parent / "shared" / "data"))

# Runs at import, before any test module imports rclpy. xdist workers are separate
# processes, so each gets its own pid-derived domain.
configure_ros_env(domain_id=unique_domain_id(), log_dir=REPO / "build" / "ros_log")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real data beside the checkout (../shared/data); tests needing it fail loudly if absent."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA} (set MAFS_DATA_ROOT)")
    return SHARED_DATA
