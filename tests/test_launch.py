"""Launch files and the RViz config: evaluated where launch_ros is importable, checked statically everywhere."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCH_ARGS = {
    "mafs.launch.py": {"params_file", "namespace", "thermal_topic", "rgb_topic", "rgb_info_topic", "use_sim_time",
                       "rviz", "log_level"},
    "replay.launch.py": {"bag", "rate", "loop", "params_file", "namespace", "thermal_topic", "rgb_topic",
                         "rgb_info_topic", "rviz", "log_level"},
}


def declared_args(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", "") == "DeclareLaunchArgument" and isinstance(node.args[0], ast.Constant)}


@pytest.mark.parametrize("name", sorted(LAUNCH_ARGS))
def test_launch_file_declares_its_arguments(name: str) -> None:
    assert declared_args(REPO / "launch" / name) == LAUNCH_ARGS[name]


def test_rviz_config_shows_the_four_image_outputs() -> None:
    pytest.importorskip("rclpy", reason="rclpy wheels not installed")
    from mafs_ros.node import OUTPUTS

    cfg = yaml.safe_load((REPO / "config" / "mafs.rviz").read_text())
    shown = {d["Topic"]["Value"] for d in cfg["Visualization Manager"]["Displays"]
             if d["Class"] == "rviz_default_plugins/Image"}
    assert shown == {"/" + topic for topic, _ in OUTPUTS.values()}


@pytest.mark.parametrize("name", sorted(LAUNCH_ARGS))
def test_launch_description_evaluates(name: str) -> None:
    pytest.importorskip("launch_ros", reason="launch_ros not importable here (no ROS distribution)")
    from launch.actions import DeclareLaunchArgument

    from launch import LaunchContext

    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    names = {a.name for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert names == LAUNCH_ARGS[name]
    context = LaunchContext()
    for arg in ld.entities:
        if isinstance(arg, DeclareLaunchArgument) and arg.default_value is not None:
            try:
                context.launch_configurations[arg.name] = "".join(s.perform(context) for s in arg.default_value)
            except KeyError:  # FindPackageShare before `colcon build` installed mafs_ros
                pass
    assert context.launch_configurations.get("rviz") in ("true", "false")
