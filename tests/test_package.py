"""Packaging: package.xml is a valid format-3 manifest with what a ROS user needs; setup.py installs it all."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_package_xml_declares_runtime_dependencies() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "mafs_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root if e.tag in ("depend", "exec_depend")}
    needed = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs", "cv_bridge",
              "message_filters", "launch_ros", "rviz2", "python3-numpy", "python3-opencv", "python3-torch",
              "python3-yaml"}
    assert needed <= deps, f"missing exec deps: {sorted(needed - deps)}"
    tests = {e.text for e in root if e.tag == "test_depend"}
    assert "python3-pytest" in tests


def test_setup_installs_both_packages_data_and_entry_points(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "setup.py", "-q", "--name"], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "mafs_ros", out.stderr
    src = (REPO / "setup.py").read_text()
    for needle in ("mafs_core", "mafs_ros", "resource/", "launch/*.py", "config/*",
                   "mafs_node = mafs_ros.node:main", "mafs = mafs_ros.cli:main"):
        assert needle in src, needle
    assert (REPO / "resource" / "mafs_ros").exists()


def test_version_is_consistent() -> None:
    import mafs_core

    root = ET.parse(REPO / "package.xml").getroot()
    assert root.findtext("version") == mafs_core.__version__
    assert f'version="{mafs_core.__version__}"' in (REPO / "setup.py").read_text()
