"""scripts/bootstrap_miou.py on generated masks: a perfect model scores 1 with a zero-width interval, identical
masks differ by exactly 0, and a model that misses one class on some frames is reported worse with P(better) 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _write(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for name, a in arrays.items():
        cv2.imwrite(str(folder / f"{name}.png"), a)


def test_bootstrap_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = {f"{i:05d}": rng.integers(0, 3, size=(12, 16), dtype=np.uint8) for i in range(10)}
    worse = {n: np.where((a == 2) & (i % 2 == 0), 0, a).astype(np.uint8) for i, (n, a) in enumerate(labels.items())}
    _write(tmp_path / "label", labels)
    _write(tmp_path / "perfect" / "mask", labels)
    _write(tmp_path / "same" / "mask", labels)
    _write(tmp_path / "worse" / "mask", worse)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bootstrap_miou.py"), str(tmp_path / "label"),
                          *(str(tmp_path / m) for m in ("perfect", "same", "worse")), "--classes", "3", "--n", "200"],
                         capture_output=True, text=True, check=True).stdout
    rows = {line.split("|")[1].strip().rsplit("/", 1)[-1]: [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith(f"| {tmp_path}")}
    assert rows["perfect"][:2] == ["1.000", "1.000 … 1.000"]
    assert rows["same"][2:] == ["+0.000", "+0.000 … +0.000", "0.000"]
    assert float(rows["worse"][0]) < 0.9 and float(rows["worse"][2]) < 0 and rows["worse"][4] == "0.000"
