"""QoS profiles (REP-2003) and the publisher/subscription compatibility check done at activation."""

from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSCompatibility,
    QoSProfile,
    ReliabilityPolicy,
    qos_check_compatible,
)

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def input_qos(reliability: str = "best_effort", depth: int = 5) -> QoSProfile:
    """Camera subscriptions: sensor data (best effort, keep last) by default, so any camera driver matches."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def output_qos(reliability: str = "reliable", depth: int = 5) -> QoSProfile:
    """Image outputs: reliable keep-last (REP-2003 for perception outputs); volatile."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos() -> QoSProfile:
    """class_info: late subscribers (rviz, loggers) get the last message."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def check_publishers(node: Node, topic: str, sub_qos: QoSProfile) -> list[str]:
    """Warnings for publishers already on ``topic`` whose QoS cannot (or may not) reach ``sub_qos``."""
    warnings = []
    for info in node.get_publishers_info_by_topic(topic):
        compat, reason = qos_check_compatible(info.qos_profile, sub_qos)
        if compat != QoSCompatibility.ERROR:  # WARNING = "may not match" (e.g. system_default liveliness): noise
            continue
        pub_rel = info.qos_profile.reliability.name.lower()
        sub_rel = sub_qos.reliability.name.lower()
        fix = ""
        if info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT and sub_qos.reliability == \
                ReliabilityPolicy.RELIABLE:
            fix = " (set qos.input_reliability: best_effort)"
        warnings.append(f"QoS incompatible on {topic}: publisher {info.node_namespace.rstrip('/')}/{info.node_name} "
                        f"offers {pub_rel}, this node requests {sub_rel}: {reason.strip()}{fix}")
    return warnings
