"""mafs_core must run without ROS: no module imports rclpy or a ROS package, not even lazily."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "mafs_core"
ROS_PACKAGES = {
    "rclpy", "sensor_msgs", "std_msgs", "message_filters", "cv_bridge", "launch", "launch_ros",
    "diagnostic_msgs", "lifecycle_msgs", "rosgraph_msgs", "builtin_interfaces", "rosidl_runtime_py",
    "ament_index_python", "rclpy_message_converter", "mafs_ros",
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_no_ros_imports_in_sources():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 5
    bad = {str(f.relative_to(REPO)): sorted(_imports(f) & ROS_PACKAGES) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"mafs_core modules import ROS packages: {bad}"


def test_importing_every_core_module_loads_no_ros():
    modules = sorted("mafs_core." + ".".join(p.relative_to(CORE).with_suffix("").parts)
                     for p in CORE.rglob("*.py") if p.name != "__main__.py")
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"ros = {sorted(ROS_PACKAGES)!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ros)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing mafs_core loaded ROS modules: {loaded}"
