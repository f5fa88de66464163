"""mafs_node with its parameters file, topic remaps and (optionally) RViz.

    ros2 launch mafs_ros mafs.launch.py thermal_topic:=/flir/image_raw rgb_topic:=/camera/color/image_raw
    ros2 launch mafs_ros mafs.launch.py params_file:=/path/to/my.yaml namespace:=front rviz:=true
"""

from __future__ import annotations

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PKG = "mafs_ros"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PKG)
    args = [
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "mafs.yaml"]),
                              description="node parameters (YAML, keyed /**)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("thermal_topic", default_value="thermal/image", description="thermal image input"),
        DeclareLaunchArgument("rgb_topic", default_value="rgb/image", description="RGB image input"),
        DeclareLaunchArgument("rgb_info_topic", default_value="rgb/camera_info",
                              description="RGB camera_info (optional; republished next to the outputs)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with config/mafs.rviz"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
    ]
    node = Node(
        package=PKG,
        executable="mafs_node",
        name="mafs_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": LaunchConfiguration("use_sim_time")}],
        remappings=[
            ("thermal/image", LaunchConfiguration("thermal_topic")),
            ("rgb/image", LaunchConfiguration("rgb_topic")),
            ("rgb/camera_info", LaunchConfiguration("rgb_info_topic")),
        ],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="mafs_rviz",
        namespace=LaunchConfiguration("namespace"),
        arguments=["-d", PathJoinSubstitution([share, "config", "mafs.rviz"])],
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*args, node, rviz])
