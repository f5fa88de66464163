"""mafs_node with its parameters file, topic remaps and (optionally) RViz.

    ros2 launch mafs_ros mafs.launch.py thermal_topic:=/flir/image_raw rgb_topic:=/camera/color/image_raw
    ros2 launch mafs_ros mafs.launch.py params_file:=/path/to/my.yaml namespace:=front rviz:=true
    ros2 launch mafs_ros mafs.launch.py local_only:=true   # one host: loopback DDS + shared-memory profile

DDS (RMW, ROS_DOMAIN_ID, discovery range, profile) is the robot's environment unless local_only:=true.
rgb_info_topic defaults to the camera_info beside rgb_topic (.../image_raw -> .../camera_info).
"""

from __future__ import annotations

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from mafs_ros.launch_support import local_dds_env

PKG = "mafs_ros"


def _node(context, *_args, **_kwargs) -> list[Node]:
    remappings = [("thermal/image", LaunchConfiguration("thermal_topic")),
                  ("rgb/image", LaunchConfiguration("rgb_topic"))]
    info = LaunchConfiguration("rgb_info_topic").perform(context)
    if info:  # else the node takes the camera_info beside the (remapped) RGB topic
        remappings.append(("rgb/camera_info", info))
    return [Node(
        package=PKG,
        executable="mafs_node",
        name="mafs_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": LaunchConfiguration("use_sim_time"),
                                                         "autostart": LaunchConfiguration("autostart")}],
        remappings=remappings,
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PKG)
    args = [
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "mafs.yaml"]),
                              description="node parameters (YAML, keyed /**)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("thermal_topic", default_value="thermal/image", description="thermal image input"),
        DeclareLaunchArgument("rgb_topic", default_value="rgb/image", description="RGB image input"),
        DeclareLaunchArgument("rgb_info_topic", default_value="",
                              description="RGB camera_info (optional; republished next to the outputs); empty = "
                                          "beside rgb_topic (image_pipeline convention)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure + activate at start (false: wait for lifecycle transitions)"),
        DeclareLaunchArgument("local_only", default_value="false",
                              description="single host: loopback DDS and the shared-memory profile for every "
                                          "process here (default: the robot's DDS set-up, untouched)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with config/mafs.rviz"),
        DeclareLaunchArgument("fixed_frame", default_value="rgb_camera",
                              description="RViz fixed frame: the RGB camera's frame_id (the outputs carry it)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
    ]
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="mafs_rviz",
        namespace=LaunchConfiguration("namespace"),  # the config's topics are relative: they follow it
        arguments=["-d", PathJoinSubstitution([share, "config", "mafs.rviz"]),
                   "--fixed-frame", LaunchConfiguration("fixed_frame")],
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    local = local_dds_env(share, LaunchConfiguration("local_only"))
    return LaunchDescription([*args, *local, OpaqueFunction(function=_node), rviz])
