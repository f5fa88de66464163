"""GPU checks of the engine: reduced precision, CUDA graphs, channels_last, memory release.

Skipped without CUDA; run on a lent GPU with `pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from mafs_core.engine import FusionSegmenter
from mafs_core.io import list_pairs, read_ir, read_vis

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def _engine(**kw) -> FusionSegmenter:
    """Trained weights when shipped (meaningful margins between classes), else a seeded random network."""
    from mafs_core.weights import default_checkpoint

    try:
        return FusionSegmenter.from_checkpoint(default_checkpoint(), **{"device": "cuda", **kw})
    except FileNotFoundError:
        return FusionSegmenter.from_variant("mafs_t", seed=0, **{"device": "cuda", **kw})


@pytest.fixture(scope="module")
def pairs(sample_data) -> list[tuple[np.ndarray, np.ndarray]]:
    ps = list_pairs(sample_data / "msrs" / "ir", sample_data / "msrs" / "vi")[:4]
    return [(read_ir(p.ir), read_vis(p.vis)) for p in ps]


@pytest.fixture(scope="module")
def fp32(pairs):
    eng = _engine(precision="fp32", cuda_graphs=False)
    yield [eng.run(ir, vis) for ir, vis in pairs]
    eng.release()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_agrees_with_fp32(pairs, fp32, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    eng = _engine(precision=precision)
    assert eng.precision == precision
    for (ir, vis), ref in zip(pairs, fp32, strict=True):
        res = eng.run(ir, vis)
        agree = (res.mask == ref.mask).mean()
        assert agree >= 0.99, f"{precision}: mask agreement {agree:.4f}"
        assert np.abs(res.fused_bgr.astype(int) - ref.fused_bgr.astype(int)).mean() < 2.0
    eng.release()


def test_cuda_graphs_equal_eager(pairs):
    graphs = _engine(precision="fp16", cuda_graphs=True, warmup_size=(480, 640))
    eager = _engine(precision="fp16", cuda_graphs=False)
    assert graphs._graphs is not None and len(graphs._graphs.graphs) == 1  # captured during warm-up
    for ir, vis in pairs:
        a, b = graphs.run(ir, vis), eager.run(ir, vis)
        assert (a.mask == b.mask).mean() >= 0.999
        assert np.abs(a.fused_bgr.astype(int) - b.fused_bgr.astype(int)).max() <= 1
    # a new size re-captures and is still right
    ir, vis = pairs[0]
    ir2, vis2 = cv2.resize(ir, (320, 240)), cv2.resize(vis, (320, 240))
    a, b = graphs.run(ir2, vis2), eager.run(ir2, vis2)
    assert a.mask.shape == (240, 320) and len(graphs._graphs.graphs) == 2
    assert (a.mask == b.mask).mean() >= 0.999
    assert {"preprocess", "inference", "postprocess", "total", "device"} <= set(a.timings)
    graphs.release()
    eager.release()


def test_channels_last_and_layout_agree(pairs):
    cl = _engine(precision="fp32", channels_last=True, cuda_graphs=False)
    nchw = _engine(precision="fp32", channels_last=False, cuda_graphs=False)
    w = next(p for p in cl.model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert w.is_contiguous(memory_format=torch.channels_last)
    ir, vis = pairs[0]
    a, b = cl.run(ir, vis), nchw.run(ir, vis)
    assert (a.mask == b.mask).mean() >= 0.999
    assert np.abs(a.fused_bgr.astype(int) - b.fused_bgr.astype(int)).max() <= 1
    cl.release()
    nchw.release()


def test_percentile_and_homography_on_device(pairs):
    eng = _engine(thermal_norm="percentile", homography=[1, 0, 5, 0, 1, -3, 0, 0, 1])
    ir, vis = pairs[0]
    for _ in range(3):
        res = eng.run(ir.astype(np.uint16) * 200, vis)
    assert res.mask.shape == vis.shape[:2]
    eng.release()


def test_release_frees_memory(pairs):
    def cycle() -> int:
        eng = _engine(precision="fp16", cuda_graphs=True)
        eng.run(*pairs[0])
        held = torch.cuda.memory_allocated()
        eng.release()
        torch.cuda.synchronize()
        return held

    cycle()  # first use may allocate per-process state (cuBLAS/cuDNN workspaces) that is kept on purpose
    before = torch.cuda.memory_allocated()
    held = cycle()
    assert held > before
    assert torch.cuda.memory_allocated() - before < 1 << 20  # < 1 MiB left behind per engine
    eng = _engine(precision="fp16")
    eng.release()
    with pytest.raises(RuntimeError, match="released"):
        eng.run(*pairs[0])
