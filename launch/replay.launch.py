"""Replay a bag through mafs_node on sim time, with RViz.

    ros2 launch mafs_ros replay.launch.py bag:=msrs.mcap
    ros2 launch mafs_ros replay.launch.py bag:=my_rig.mcap thermal_topic:=/flir/image_raw rgb_topic:=/cam/image_raw

Defaults match bags written by `mafs bag make` (/thermal/image_raw, /rgb/image_raw). The bag
publishes /clock (--clock) and the node runs with use_sim_time, so latency and max_pair_age use
the bag's time.
"""

from __future__ import annotations

from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.conditions import IfCondition, UnlessCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

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
        DeclareLaunchArgument("rgb_info_topic", default_value="/rgb/camera_info"),
        DeclareLaunchArgument("rviz", default_value="true"),
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
            "rviz": LaunchConfiguration("rviz"),
            "log_level": LaunchConfiguration("log_level"),
        }.items(),
    )
    play_cmd = ["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock", "--rate", LaunchConfiguration("rate")]
    play = ExecuteProcess(cmd=play_cmd, output="screen", condition=UnlessCondition(LaunchConfiguration("loop")))
    play_loop = ExecuteProcess(cmd=[*play_cmd, "--loop"], output="screen",
                               condition=IfCondition(LaunchConfiguration("loop")))
    return LaunchDescription([*args, node, play, play_loop])
