"""`mafs_wait_active NODE`: exit 0 once a lifecycle node reports a state (default: active).

replay.launch.py starts `ros2 bag play` only after this returns, so the first messages of a bag are
not published before the node has loaded its model, warmed up and subscribed (they would be lost).

    ros2 run mafs_ros mafs_wait_active mafs_node --timeout 120 --ros-args -r __ns:=/front
"""

from __future__ import annotations

import argparse
import sys
import time

from mafs_ros.env import configure_entry_point, split_local_flag


def main(args: list[str] | None = None) -> int:
    argv, local = split_local_flag(list(sys.argv if args is None else args))
    configure_entry_point(local)
    import rclpy
    from lifecycle_msgs.srv import GetState
    from rclpy.utilities import remove_ros_args

    ap = argparse.ArgumentParser(prog="mafs_wait_active", description=__doc__.split("\n")[0])
    ap.add_argument("node", help="lifecycle node name, relative to this process's namespace (e.g. mafs_node)")
    ap.add_argument("--state", default="active", help="state label to wait for (default: active)")
    ap.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 = wait until the state is reached")
    opts = ap.parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = rclpy.create_node("mafs_wait_active")
    service = node.resolve_service_name(f"{opts.node}/get_state")
    client = node.create_client(GetState, service)
    target = service.removesuffix("/get_state")
    deadline = time.monotonic() + opts.timeout if opts.timeout > 0 else float("inf")
    label, next_note = "unknown", time.monotonic() + 10.0
    try:
        while time.monotonic() < deadline:
            if client.wait_for_service(timeout_sec=0.5):
                future = client.call_async(GetState.Request())
                rclpy.spin_until_future_complete(node, future, timeout_sec=2.0)
                if future.done() and future.result() is not None:
                    label = future.result().current_state.label
                    if label == opts.state:
                        print(f"{target} is {label}", flush=True)
                        return 0
            if time.monotonic() > next_note:
                print(f"waiting for {target} to be {opts.state} (now: {label})", flush=True)
                next_note = time.monotonic() + 10.0
            time.sleep(0.2)
        print(f"mafs_wait_active: {target} not {opts.state} after {opts.timeout:g} s "
              f"(last state: {label})", flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
