"""Replay a bag through mafs_node on sim time, with RViz.

    ros2 launch mafs_ros replay.launch.py bag:=msrs.mcap
    ros2 launch mafs_ros replay.launch.py bag:=my_rig.mcap thermal_topic:=/flir/image_raw rgb_topic:=/cam/image_raw

Defaults match bags written by `mafs bag make` (/thermal/image_raw, /rgb/image_raw). The bag
publishes /clock (--clock) and the node runs with use_sim_time, so latency and max_pair_age use
the bag's time. Playback starts once the node is active (model loaded, warmed up, subscribed), so
the bag's first frames are not lost; with autostart:=false, once you activate it. loop:=true is
safe: the node resets pairing and the thermal normaliser when time goes back.
"""

from __future__ import annotations

from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    IncludeLaunchDescription,
    LogInfo,
    RegisterEventHandler,
)
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from mafs_ros.launch_support import local_dds_env

PKG = "mafs_ros"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PKG)
    args = [
        DeclareLaunchArgument("bag", description="bag directory or file to play"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate"),
        DeclareLaunchArgument("loop", default_value="false", description="loop the bag"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "mafs.yaml"])),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("thermal_topic", default_value="/thermal/image_raw"),
        DeclareLaunchArgument("rgb_topic", default_value="/rgb/image_raw"),
        DeclareLaunchArgument("rgb_info_topic", default_value="", description="empty = beside rgb_topic"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="false: playback waits until you activate the node"),
        DeclareLaunchArgument("local_only", default_value="false", description="single-host DDS (see mafs.launch.py)"),
        DeclareLaunchArgument("rviz", default_value="true"),
        DeclareLaunchArgument("fixed_frame", default_value="rgb_camera", description="RViz fixed frame"),
        DeclareLaunchArgument("log_level", default_value="info"),
    ]
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, "launch", "mafs.launch.py"])),
        launch_arguments={
            "params_file": LaunchConfiguration("params_file"),
            "namespace": LaunchConfiguration("namespace"),
            "thermal_topic": LaunchConfiguration("thermal_topic"),
            "rgb_topic": LaunchConfiguration("rgb_topic"),
            "rgb_info_topic": LaunchConfiguration("rgb_info_topic"),
            "use_sim_time": "true",
            "autostart": LaunchConfiguration("autostart"),
            "local_only": LaunchConfiguration("local_only"),
            "rviz": LaunchConfiguration("rviz"),
            "fixed_frame": LaunchConfiguration("fixed_frame"),
            "log_level": LaunchConfiguration("log_level"),
        }.items(),
    )
    play_cmd = ["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock", "--rate", LaunchConfiguration("rate")]
    play = ExecuteProcess(cmd=play_cmd, output="screen", condition=UnlessCondition(LaunchConfiguration("loop")))
    play_loop = ExecuteProcess(cmd=[*play_cmd, "--loop"], output="screen",
                               condition=IfCondition(LaunchConfiguration("loop")))
    wait_active = Node(package=PKG, executable="mafs_wait_active", name="mafs_wait_active",
                       namespace=LaunchConfiguration("namespace"), arguments=["mafs_node"], output="screen")

    def play_once_active(event, _context):
        if event.returncode != 0:
            return [LogInfo(msg="mafs_node did not become active: the bag is not played")]
        return [play, play_loop]

    return LaunchDescription([*args, *local_dds_env(share, LaunchConfiguration("local_only")), node, wait_active,
                              RegisterEventHandler(OnProcessExit(target_action=wait_active,
                                                                 on_exit=play_once_active))])
