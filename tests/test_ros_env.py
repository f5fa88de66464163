"""The DDS environment every entry point and test gets: loopback only, SHM profile, spawn, own domain."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from mafs_ros.env import config_path, configure_ros_env, unique_domain_id

NS = {"f": "http://www.eprosima.com"}


def test_test_process_is_isolated() -> None:
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert os.environ["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert 1 <= int(os.environ["ROS_DOMAIN_ID"]) <= 200
    assert "build" in os.environ["ROS_LOG_DIR"]
    assert mp.get_start_method() == "spawn"


def test_profile_has_shared_memory_big_enough_for_720p_and_loopback_udp_only() -> None:
    root = ET.parse(config_path("fastdds_shm.xml")).getroot()
    descs = {d.findtext("f:transport_id", namespaces=NS): d for d in root.iterfind(".//f:transport_descriptor", NS)}
    shm = next(d for d in descs.values() if d.findtext("f:type", namespaces=NS) == "SHM")
    frame_720p = 1280 * 720 * 3
    assert int(shm.findtext("f:segment_size", namespaces=NS)) >= 8 * frame_720p
    assert int(shm.findtext("f:maxMessageSize", namespaces=NS)) >= frame_720p
    udp = next(d for d in descs.values() if d.findtext("f:type", namespaces=NS) == "UDPv4")
    assert [a.text for a in udp.iterfind(".//f:address", NS)] == ["127.0.0.1"]
    participant = root.find(".//f:participant", NS)
    assert participant.findtext(".//f:useBuiltinTransports", namespaces=NS) == "false"


def test_user_settings_win_over_defaults() -> None:
    code = (
        "import os; from mafs_ros.env import configure_ros_env; "
        "v = configure_ros_env(domain_id=7); "
        "print(v['ROS_AUTOMATIC_DISCOVERY_RANGE'], v['ROS_DOMAIN_ID'], v['RMW_IMPLEMENTATION'])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "RMW_"))}
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["SUBNET", "7", "rmw_fastrtps_cpp"]


def test_domain_ids_differ_between_processes() -> None:
    ids = {unique_domain_id(pid) for pid in range(1000, 1010)}
    assert len(ids) == 10 and all(1 <= i <= 200 for i in ids)
    assert configure_ros_env()["ROS_DOMAIN_ID"] == os.environ["ROS_DOMAIN_ID"]
