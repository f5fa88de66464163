"""`mafs demo --frames 6` end to end on the MSRS samples: bag -> node process over DDS -> recorded outputs -> report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("rclpy", reason="rclpy wheels not installed")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_end_to_end(sample_data: Path, tmp_path: Path) -> None:
    from mafs_core.weights import default_checkpoint

    try:
        default_checkpoint()
        weights: list[str] = []
    except FileNotFoundError:  # TRAIN has not shipped weights yet: same pipeline, untrained network
        weights = ["--random-init", "mafs_t"]
    out = tmp_path / "demo_out"
    r = subprocess.run([sys.executable, "-m", "mafs_ros.cli", "demo", "--data", str(sample_data / "msrs"),
                        "--out", str(out), "--frames", "6", *weights], cwd=REPO, capture_output=True, text=True,
                       timeout=230)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "MAFS demo: 6/6 pairs" in r.stdout
    for step in range(1, 7):
        assert f"[demo {step}/6]" in r.stdout, "the terminal says what it did, step by step"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs_processed"] == 6 and summary["fps"] > 0
    assert summary["latency_ms"]["p50"] > 0 and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"]
    assert set(summary["fusion_by_condition"]) == {"day", "night"}
    assert all(n == 6 for n in summary["output_counts"].values())
    assert int(summary["node_diagnostics"]["processed"]) == 6, summary["node_diagnostics"]
    md = (out / "report.md").read_text()
    assert "## What it did" in md and "latency p50 / p99" in md and "montage.png" in md
    assert (out / "montage.png").stat().st_size > 50_000
    assert (out / "output_bag" / "metadata.yaml").exists() and (out / "input_bag" / "metadata.yaml").exists()


def test_demo_without_weights_says_so(tmp_path: Path, sample_data: Path) -> None:
    """No shipped weights -> a clear message naming the escape hatch, exit code 2, nothing started."""
    env = {**os.environ, "MAFS_WEIGHTS_DIR": str(tmp_path / "none")}  # set: the only place looked in
    r = subprocess.run([sys.executable, "-m", "mafs_ros.cli", "demo", "--data", str(sample_data / "msrs"),
                        "--out", str(tmp_path / "o"), "--frames", "2"], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 2 and "--random-init" in r.stdout and "mafs_t.safetensors" in r.stdout
