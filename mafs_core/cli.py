"""The `mafs` command line. Each sub-command lives beside the code it drives and registers itself.

A module listed in COMMANDS exposes ``register(subparsers)`` which adds its parser and
sets ``func=callable(args) -> int``. Modules import lazily so `mafs --help` stays fast.
The ROS layer (mafs_ros.cli) adds commands that need rclpy, such as `mafs bag play`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: tuple[str, ...] = (
    "mafs_core.infer",       # mafs infer, mafs export-onnx
    "mafs_core.train",       # mafs train
    "mafs_core.evaluate",    # mafs eval
    "mafs_core.bag",         # mafs bag make|eval|export
    "mafs_core.registration",  # mafs register
    "mafs_core.widen",       # mafs widen
    "mafs_core.backbone",    # mafs add-backbone
)


def build_parser(extra_modules: Sequence[str] = ()) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="mafs", description="MAFS infrared-visible fusion and segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    registry: dict = {"subparsers": sub}
    for name in (*COMMANDS, *extra_modules):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(name):
                continue  # that part of the package is not built yet
            raise
        module.register(sub, registry)
    return parser, registry


def main(argv: Sequence[str] | None = None, extra_modules: Sequence[str] = ()) -> int:
    parser, _ = build_parser(extra_modules)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
