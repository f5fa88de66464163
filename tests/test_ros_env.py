"""DDS environments: tests get loopback only, the SHM profile, spawn and their own domain; the entry points
(`mafs-node`, `mafs bag play`) leave the robot's DDS set-up alone unless asked for the single-host one."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mafs_ros import env as mafs_env
from mafs_ros.env import DDS_VARS, config_path, configure_ros_env, describe_dds, split_local_flag, unique_domain_id

NS = {"f": "http://www.eprosima.com"}
REPO = Path(__file__).resolve().parent.parent


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


# ---------------------------------------------------------------- entry points: the robot's DDS, or --local


def robot_env(**extra: str) -> dict[str, str]:
    """This process's environment without any DDS setting: what a robot that set none of them gives the node."""
    env = {k: v for k, v in os.environ.items() if k not in DDS_VARS and k != mafs_env.LOCAL_ENV}
    return {**env, "RCUTILS_LOGGING_BUFFERED_STREAM": "0", "PYTHONUNBUFFERED": "1", **extra}


ENTRY_ENV = ("import json, os, sys; from mafs_ros.env import DDS_VARS, configure_entry_point; "
             "configure_entry_point(local='--local' in sys.argv); "
             "print(json.dumps({k: os.environ.get(k) for k in DDS_VARS}))")


@pytest.mark.parametrize("how", ["robot", "--local", "MAFS_LOCAL_DDS=1"])
def test_entry_point_environment_without_a_participant(how: str) -> None:
    extra = {"MAFS_LOCAL_DDS": "1"} if how == "MAFS_LOCAL_DDS=1" else {}
    args = ["--local"] if how == "--local" else []
    out = subprocess.run([sys.executable, "-c", ENTRY_ENV, *args], env=robot_env(**extra), cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60)
    got = json.loads(out.stdout)
    if how == "robot":  # nothing of ours: no discovery range, profile, RMW or domain id
        assert got == dict.fromkeys(DDS_VARS), got
        return
    assert got["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and got["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert Path(got["FASTDDS_DEFAULT_PROFILES_FILE"]) == config_path("fastdds_shm.xml")
    assert got["ROS_DOMAIN_ID"] is None  # single host, but still the robot's (or the default) domain


def test_local_mode_keeps_what_the_robot_set() -> None:
    out = subprocess.run([sys.executable, "-c", ENTRY_ENV, "--local"], cwd=REPO, capture_output=True, text=True,
                         env=robot_env(ROS_DOMAIN_ID="42", FASTDDS_DEFAULT_PROFILES_FILE="/etc/robot_dds.xml"),
                         check=True, timeout=60)
    got = json.loads(out.stdout)
    assert got["ROS_DOMAIN_ID"] == "42" and got["FASTDDS_DEFAULT_PROFILES_FILE"] == "/etc/robot_dds.xml"


def test_local_flag_is_taken_from_the_programs_own_arguments_only() -> None:
    assert split_local_flag(["--local", "--ros-args", "-p", "a:=1"]) == (["--ros-args", "-p", "a:=1"], True)
    assert split_local_flag(["--ros-args", "-r", "__node:=x"]) == (["--ros-args", "-r", "__node:=x"], False)
    assert split_local_flag(["prog", "--ros-args", "--local"]) == (["prog", "--ros-args", "--local"], False)


def test_startup_line_states_the_dds_set_up() -> None:
    line = describe_dds("rmw_fastrtps_cpp", 0, {})
    assert line == ("DDS set-up: RMW rmw_fastrtps_cpp (default), ROS_DOMAIN_ID 0 (default), discovery range SUBNET "
                    "(default), Fast DDS profile none (middleware defaults)")
    line = describe_dds("rmw_fastrtps_cpp", 7, {"MAFS_LOCAL_DDS": "1", "ROS_DOMAIN_ID": "7",
                                                "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
                                                "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                                                "FASTDDS_DEFAULT_PROFILES_FILE": "/x/fastdds_shm.xml"})
    assert "single-host" in line and "ROS_DOMAIN_ID 7," in line and "range LOCALHOST" in line and "/x/fastdds" in line
    humble = describe_dds("rmw_cyclonedds_cpp", 3, {"ROS_DISTRO": "humble", "ROS_LOCALHOST_ONLY": "1",
                                                   "ROS_STATIC_PEERS": "10.0.0.2"})
    assert "localhost only (ROS_LOCALHOST_ONLY=1)" in humble and "static peers 10.0.0.2" in humble
    assert humble.endswith("Fast DDS profile n/a")


def test_local_mode_on_humble_also_sets_localhost_only() -> None:
    code = "from mafs_ros.env import configure_ros_env; print(configure_ros_env().get('ROS_LOCALHOST_ONLY'))"
    out = subprocess.run([sys.executable, "-c", code], env=robot_env(ROS_DISTRO="humble"), cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("ament_index", [True, False], ids=["ament_index_python", "AMENT_PREFIX_PATH"])
def test_profile_is_found_after_a_plain_colcon_build(tmp_path: Path, ament_index: bool) -> None:
    """colcon (no --symlink-install) copies mafs_ros into site-packages and config/ into share/: no config/ beside
    the module, so the profile must come from the ament index (or AMENT_PREFIX_PATH where that is not importable)."""
    prefix = tmp_path / "install" / "mafs_ros"
    site = prefix / "lib" / "python3" / "site-packages"
    shutil.copytree(REPO / "mafs_ros", site / "mafs_ros", ignore=shutil.ignore_patterns("__pycache__"))
    share = prefix / "share" / "mafs_ros"
    (share / "config").mkdir(parents=True)
    shutil.copy(REPO / "config" / "fastdds_shm.xml", share / "config")
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "mafs_ros").touch()
    block = "" if ament_index else "sys.modules['ament_index_python'] = None; "
    code = (f"import sys; {block}import mafs_ros.env as e; print(e.__file__); print(e.config_path('fastdds_shm.xml')); "
            "print(e.configure_ros_env()['FASTDDS_DEFAULT_PROFILES_FILE'])")
    env = robot_env(PYTHONPATH=str(site), AMENT_PREFIX_PATH=f"{prefix}{os.pathsep}{sys.prefix}")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True, timeout=60)
    module, found, in_force = out.stdout.split()
    assert Path(module).is_relative_to(site), module
    assert Path(found) == Path(in_force) == share / "config" / "fastdds_shm.xml"


def _unshare_ok() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_netns = pytest.mark.skipif(not _unshare_ok(), reason="`unshare -n` not permitted here (needs root)")


def in_own_netns(cmd: list[str], env: dict[str, str], until: str | None, timeout: float = 60.0) -> str:
    """Run ``cmd`` in a network namespace of its own (loopback only: nothing can leave the machine), without our
    DDS variables; return its output once a line contains ``until`` (then SIGINT) or once it exits."""
    wrapped = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    proc = subprocess.Popen(wrapped, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if until is not None and until in line:
                seen.set()
        seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seen.wait(timeout)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        reader.join(5)
    return "".join(lines)


@needs_netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("local", [False, True], ids=["robot", "local"])
def test_node_entry_point_states_and_keeps_the_robots_dds_set_up(local: bool) -> None:
    node = [sys.executable, "-m", "mafs_ros.node", *(["--local"] if local else []), "--ros-args",
            "-p", "autostart:=false", "-r", "__ns:=/t_netns"]
    out = in_own_netns(node, robot_env(), until="DDS set-up")
    line = next((ln for ln in out.splitlines() if "DDS set-up" in ln), None)
    assert line is not None, out
    if local:
        assert "single-host" in line and "discovery range LOCALHOST" in line and "fastdds_shm.xml" in line, line
    else:
        assert ("RMW rmw_fastrtps_cpp (default), ROS_DOMAIN_ID 0 (default), discovery range SUBNET (default), "
                "Fast DDS profile none (middleware defaults)") in line, line
    assert "Traceback" not in out, out


@needs_netns
@pytest.mark.timeout(120)
def test_bag_play_entry_point_keeps_the_robots_dds_set_up(tmp_path: Path) -> None:
    from test_bag import write_fixture_pairs

    from mafs_core.bag import make_bag

    src = write_fixture_pairs(tmp_path / "pairs", n=2, labels=False)
    make_bag(src / "ir", src / "vi", tmp_path / "bag")
    out = in_own_netns([sys.executable, "-m", "mafs_ros.cli", "bag", "play", str(tmp_path / "bag")], robot_env(),
                       until=None)
    assert "discovery range SUBNET (default)" in out and "Fast DDS profile none" in out, out
    assert "published 4 messages" in out, out


# ---------------------------------------------------------------- which rclpy generation this run tests


def test_ros_python_packages_come_from_one_distribution() -> None:
    """`make test` runs the node tests twice: Kilted (.venv) and Jazzy (.venv-jazzy, where a .pth puts .venv's
    site-packages, for torch and OpenCV, after the Jazzy ROS packages). Every ROS module the node and these tests
    load must then be Jazzy's: one of Kilted's would load Kilted's C libraries into a Jazzy process."""
    import importlib.metadata as md

    import lifecycle_msgs.srv  # noqa: F401
    import rclpy
    import rosgraph_msgs.msg  # noqa: F401

    import mafs_ros.bag_play
    import mafs_ros.node  # noqa: F401

    ros_site = Path(rclpy.__file__).resolve().parent.parent
    version = md.version("ros-rclpy")
    print(f"\nrclpy {version} from {rclpy.__file__}")
    expected = os.environ.get("MAFS_EXPECT_RCLPY")
    if expected:
        assert version.startswith(expected), f"rclpy {version} here, {expected}* expected"
    elsewhere: set[str] = set()  # top-level modules of ROS wheels installed in another site-packages
    for dist in md.distributions():
        if (dist.metadata["Name"] or "").startswith(("ros-", "ros_")) and \
                Path(str(dist.locate_file(""))).resolve() != ros_site:
            elsewhere |= {f.parts[0].removesuffix(".py") for f in dist.files or () if f.parts}
    leaked = {name: mod.__file__ for name, mod in list(sys.modules.items())
              if "." not in name and name in elsewhere and getattr(mod, "__file__", None)
              and not Path(mod.__file__).resolve().is_relative_to(ros_site)}
    assert not leaked, f"ROS modules from another distribution: {leaked}"
