"""Pieces shared by launch/*.py (imported there only: needs the ROS `launch` package, not a pip install)."""

from __future__ import annotations

from typing import Any

from mafs_ros.env import LOCAL_ENV, SHM_PROFILE


def local_dds_env(share: Any, local_only: Any) -> list[Any]:
    """local_only:=true: the single-host DDS set-up for every process a launch file starts after these
    actions (node, rviz, bag player), so they all agree; otherwise the robot's environment is untouched."""
    from launch.actions import SetEnvironmentVariable
    from launch.conditions import IfCondition
    from launch.substitutions import EnvironmentVariable, PathJoinSubstitution, PythonExpression

    env = [SetEnvironmentVariable(name, value, condition=IfCondition(local_only)) for name, value in (
        (LOCAL_ENV, "1"),
        ("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
        ("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
        ("FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([share, "config", SHM_PROFILE])),
    )]
    humble = PythonExpression(["'", local_only, "'.lower() == 'true' and '",  # Humble predates the range
                               EnvironmentVariable("ROS_DISTRO", default_value=""), "' == 'humble'"])
    return [*env, SetEnvironmentVariable("ROS_LOCALHOST_ONLY", "1", condition=IfCondition(humble))]
