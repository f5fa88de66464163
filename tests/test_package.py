"""Packaging: package.xml is a valid format-3 manifest with what a ROS user needs; setup.py installs it all."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the node, the bag tools and the launch files import at run time (not training, evaluation or the demo).
RUNTIME_MODULES = [*(REPO / "mafs_core" / f"{m}.py" for m in (
    "__init__", "engine", "preprocess", "model", "blocks", "io", "classes", "checkpoint", "onnx_backend", "bagio",
    "bag", "pairing", "weights")), *(REPO / "mafs_ros" / f"{m}.py" for m in (
    "node", "sync", "params", "qos", "diagnostics", "conversions", "env", "bag_play", "cli", "lifecycle_wait",
    "launch_support"))]
# import name -> where a distribution user gets it: a package.xml key, or requirements/distro.txt
SYSTEM = {"numpy": "python3-numpy", "cv2": "python3-opencv", "torch": "python3-torch", "yaml": "python3-yaml",
          "kornia": "python3-kornia-pip", "rosbags": "python3-rosbags-pip", "onnxruntime": "python3-onnxruntime-pip",
          "tqdm": "python3-tqdm"}
PIP_ONLY = {"safetensors": "safetensors", "onnx": "onnx"}
TRAINING_ONLY = {"tensorboard", "scipy", "matplotlib", "onnxscript"}


def exec_depends() -> set[str]:
    root = ET.parse(REPO / "package.xml").getroot()
    return {e.text for e in root if e.tag in ("depend", "exec_depend")}


def requirement_names(path: Path) -> dict[str, str]:
    """name -> version spec of a requirements file."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)(.*)", line).groups()
            out[name.lower()] = spec.strip()
    return out


def imported_top_level(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"mafs_core", "mafs_ros", "__future__"}


def test_package_xml_declares_runtime_dependencies() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "mafs_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = exec_depends()
    needed = {"rclpy", "rcl_interfaces", "builtin_interfaces", "sensor_msgs", "std_msgs", "diagnostic_msgs",
              "lifecycle_msgs", "cv_bridge", "message_filters", "vision_msgs", "launch_ros", "rviz2", "ros2bag",
              "rosbag2_storage_mcap", "python3-numpy", "python3-opencv", "python3-torch", "python3-yaml",
              "python3-kornia-pip", "python3-onnxruntime-pip", "python3-rosbags-pip"}
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


def test_every_runtime_import_has_a_source_on_a_ros_distribution() -> None:
    """Each third-party module the node and bag tools import: a package.xml dependency (ROS packages by their own
    name, Python ones by rosdep key), or requirements/distro.txt for the two that have no key."""
    deps, distro = exec_depends(), requirement_names(REPO / "requirements" / "distro.txt")
    missing = {}
    for path in RUNTIME_MODULES:
        for name in imported_top_level(path):
            ok = name in deps or SYSTEM.get(name) in deps or PIP_ONLY.get(name) in distro
            if not ok:
                missing[name] = path.name
    assert not missing, f"no package.xml key or distro requirement for: {missing}"
    assert not {f"python3-{t}" for t in TRAINING_ONLY} & deps, "training-only packages as runtime dependencies"


def test_distro_requirements_keep_the_distributions_numpy_and_opencv() -> None:
    distro = requirement_names(REPO / "requirements" / "distro.txt")
    assert not [n for n in distro if "opencv" in n], "a second cv2 would shadow python3-opencv (cv_bridge's)"
    assert not TRAINING_ONLY & set(distro)
    assert all("==" not in spec for spec in distro.values()), "ranges, not pins: the distribution decides"
    assert distro.get("numpy") == "<2", "numpy only as a guard against an upgrade past the system's 1.x"
    assert {"kornia", "safetensors", "rosbags", "onnxruntime"} <= set(distro)


def test_makefile_installs_the_pinned_sets_and_both_rclpy_generations() -> None:
    makefile = (REPO / "Makefile").read_text()
    used = set(re.findall(r"requirements/[\w.-]+\.txt", makefile))
    assert used == {"requirements/core.txt", "requirements/ros-wheels.txt", "requirements/dev.txt",
                    "requirements/ros-jazzy.txt"}
    assert all((REPO / f).is_file() for f in used)
    core = requirement_names(REPO / "requirements" / "core.txt")
    assert core["numpy"].startswith("==") and core["opencv-python-headless"].startswith("==")  # our own venv
    kilted = requirement_names(REPO / "requirements" / "ros-wheels.txt")
    jazzy = requirement_names(REPO / "requirements" / "ros-jazzy.txt")
    assert kilted["ros-rclpy"].startswith("==9.") and jazzy["ros-jazzy-rclpy"].startswith("==7.")
    msgs = {n.removeprefix("ros-") for n in kilted} - {"rclpy", "rmw-fastrtps-cpp"}
    assert {f"jazzy-{m}" for m in msgs} <= {n.removeprefix("ros-") for n in jazzy}, "same packages for both"
    test = re.search(r"^test:(.*)$", makefile, re.M).group(1).split()
    assert test == ["test-kilted", "test-jazzy"]
