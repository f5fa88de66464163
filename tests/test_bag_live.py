"""Live path (bag play -> mafs node over DDS -> recorder) == offline path (`bag eval`) for the same frames.

Runs the demo pipeline (mafs_ros.demo) on small generated frames with a fixed-seed untrained checkpoint, then
`bag eval --write-bag` on the very bag the demo played, and compares the masks and fused images bit for bit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_bag import write_fixture_pairs

from mafs_core.bag import OUTPUT_TOPICS, EvalOptions, PairingOptions, evaluate_bag
from mafs_core.bagio import BagReader

pytest.importorskip("rclpy", reason="rclpy wheels not installed")
torch = pytest.importorskip("torch")


@pytest.mark.timeout(240)
def test_live_outputs_equal_offline(tmp_path: Path) -> None:
    from mafs_core.checkpoint import save_checkpoint
    from mafs_core.model import build_model
    from mafs_ros.demo import THERMAL_OFFSET_S, run_demo

    data = write_fixture_pairs(tmp_path / "data", n=6, h=96, w=128, labels=False)
    torch.manual_seed(3)
    ckpt = tmp_path / "seeded.safetensors"
    save_checkpoint(ckpt, build_model("mafs_t", num_classes=9), {"training": {"random_init": True}})
    out = tmp_path / "demo"
    args = argparse.Namespace(data=str(data), out=str(out), frames=6, checkpoint=str(ckpt), random_init=None,
                              device="cpu", startup_timeout=120.0, frame_timeout=60.0,
                              node_param=["model.warmup_iterations:=0"])
    assert run_demo(args) == 0
    assert (out / "report.md").exists() and (out / "montage.png").exists()

    with BagReader(out / "output_bag") as r:
        live = {t: {f.stamp_ns: f.image for f in r.frames([t])} for t in (OUTPUT_TOPICS["mask"],
                                                                             OUTPUT_TOPICS["fused"])}
    assert len(live[OUTPUT_TOPICS["mask"]]) == 6, "every pair answered (flow-controlled playback)"

    # CPU convolutions sum in an order that depends on the thread count: run offline with the node process's
    # (a fresh interpreter's default), whatever other tests in this worker set.
    node_threads = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                      capture_output=True, text=True, check=True).stdout)
    offline_opts = EvalOptions(checkpoint=str(ckpt), device="cpu", write_bag=True, metrics=["EN"], progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(node_threads)
    try:
        rep = evaluate_bag(out / "input_bag", tmp_path / "offline",
                           pairing=PairingOptions(thermal_offset=-THERMAL_OFFSET_S), opts=offline_opts)
    finally:
        torch.set_num_threads(threads)
    assert rep["num_images"] == 6
    with BagReader(tmp_path / "offline" / "output_bag") as r:
        offline = {t: {f.stamp_ns: f.image for f in r.frames([t])} for t in live}
    for topic in live:
        assert live[topic].keys() == offline[topic].keys(), "same pairs, same RGB stamps"
        for stamp, img in live[topic].items():
            assert np.array_equal(img, offline[topic][stamp]), f"{topic} differs at {stamp}"
