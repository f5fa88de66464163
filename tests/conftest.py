"""Test-wide environment: loopback DDS, one ROS domain per test process, logs in build/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mafs_ros.env import configure_ros_env, unique_domain_id

REPO = Path(__file__).resolve().parent.parent
# Full real data: MAFS_DATA_ROOT (an empty value counts as unset) or ../shared/data beside the checkout.
SHARED_DATA = Path(os.environ.get("MAFS_DATA_ROOT") or REPO.parent / "shared" / "data")
# The curated real pairs committed with the project (data/samples/README.md): in every clone.
SAMPLE_DATA = REPO / "data" / "samples"

# Runs at import, before any test module imports rclpy. xdist workers are separate
# processes, so each gets its own pid-derived domain.
configure_ros_env(domain_id=unique_domain_id(), log_dir=REPO / "build" / "ros_log")


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The committed sample pairs: tests that only need some real images use these, so they run in a bare clone."""
    if not (SAMPLE_DATA / "msrs" / "ir").is_dir():
        pytest.fail(f"sample data missing at {SAMPLE_DATA}: it is part of the repository (see data/samples/README.md)")
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full real data (teacher weights, person masks, all 247 MSRS pairs): skipped where a user lacks it.

    CI always has ../shared, so there (CI=true) a missing data root fails instead of silently skipping.
    """
    if not SHARED_DATA.is_dir():
        msg = (f"full data not found at {SHARED_DATA}: set MAFS_DATA_ROOT=/path/to/data (the folder holding "
               "msrs/, roadscene/, teachers/ ...; see data/samples/README.md)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg} [CI=true: the full data must be present, no skipping]")
        pytest.skip(msg)
    return SHARED_DATA
