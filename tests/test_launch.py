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
                       "autostart", "local_only", "rviz", "fixed_frame", "log_level"},
    "replay.launch.py": {"bag", "rate", "loop", "params_file", "namespace", "thermal_topic", "rgb_topic",
                         "rgb_info_topic", "autostart", "local_only", "rviz", "fixed_frame", "log_level"},
}


def calls(path: Path, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", "")) == name]


def declared_args(path: Path) -> set[str]:
    return {c.args[0].value for c in calls(path, "DeclareLaunchArgument") if isinstance(c.args[0], ast.Constant)}


def default_of(path: Path, arg: str):
    call = next(c for c in calls(path, "DeclareLaunchArgument") if c.args[0].value == arg)
    value = next((k.value for k in call.keywords if k.arg == "default_value"), None)
    return ast.literal_eval(value) if isinstance(value, ast.Constant) else value


@pytest.mark.parametrize("name", sorted(LAUNCH_ARGS))
def test_launch_file_declares_its_arguments(name: str) -> None:
    assert declared_args(REPO / "launch" / name) == LAUNCH_ARGS[name]


def test_rviz_config_shows_the_four_image_outputs_in_the_launch_namespace() -> None:
    """Relative topics: rviz runs in the launch file's namespace, so namespace:=front shows /front/... (absolute
    names gave blank panels there). Fixed frame: the camera's (a launch argument), not a `map` nobody publishes."""
    pytest.importorskip("rclpy", reason="rclpy wheels not installed")
    from mafs_ros.node import OUTPUTS

    cfg = yaml.safe_load((REPO / "config" / "mafs.rviz").read_text())
    shown = {d["Topic"]["Value"] for d in cfg["Visualization Manager"]["Displays"]
             if d["Class"] == "rviz_default_plugins/Image"}
    assert shown == {topic for topic, _ in OUTPUTS.values()}
    fixed = cfg["Visualization Manager"]["Global Options"]["Fixed Frame"]
    launch = REPO / "launch" / "mafs.launch.py"
    assert fixed == default_of(launch, "fixed_frame") != "map"
    rviz = next(c for c in calls(launch, "Node") if any(k.arg == "package" and k.value.value == "rviz2"
                                                         for k in c.keywords))
    args = ast.unparse(next(k.value for k in rviz.keywords if k.arg == "arguments"))
    assert "'--fixed-frame', LaunchConfiguration('fixed_frame')" in args, args
    assert "LaunchConfiguration('namespace')" in ast.unparse(rviz)


@pytest.mark.parametrize("name", sorted(LAUNCH_ARGS))
def test_camera_info_follows_the_rgb_topic_and_dds_is_left_alone_by_default(name: str) -> None:
    path = REPO / "launch" / name
    assert default_of(path, "rgb_info_topic") == ""  # the node takes the camera_info beside rgb_topic
    assert default_of(path, "local_only") == "false" and default_of(path, "autostart") == "true"
    assert "local_dds_env(share, LaunchConfiguration('local_only'))" in path.read_text().replace('"', "'")
    assert calls(path, "SetEnvironmentVariable") == []  # only local_dds_env's, each under IfCondition(local_only)


def test_mafs_launch_passes_autostart_and_remaps_camera_info_only_when_given() -> None:
    text = (REPO / "launch" / "mafs.launch.py").read_text()
    assert '"autostart": LaunchConfiguration("autostart")' in text
    assert 'if info:' in text and '("rgb/camera_info", info)' in text


def test_replay_plays_the_bag_once_the_node_is_active() -> None:
    path = REPO / "launch" / "replay.launch.py"
    handler = calls(path, "OnProcessExit")
    assert len(handler) == 1 and ast.unparse(handler[0]) == (
        "OnProcessExit(target_action=wait_active, on_exit=play_once_active)")
    wait = next(c for c in calls(path, "Node") if any(k.arg == "executable" and k.value.value == "mafs_wait_active"
                                                       for k in c.keywords))
    assert "LaunchConfiguration('namespace')" in ast.unparse(wait)
    top = calls(path, "LaunchDescription")[-1]
    started = {n.id for n in ast.walk(top) if isinstance(n, ast.Name)}
    assert "wait_active" in started and not {"play", "play_loop"} & started  # the player waits for the handler
    assert "mafs_wait_active = mafs_ros.lifecycle_wait:main" in (REPO / "setup.py").read_text()


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
