"""ONNX export (`mafs export-onnx`) and the onnxruntime backend agree with PyTorch on a real MSRS pair."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mafs_core.cli import main as mafs
from mafs_core.engine import FusionSegmenter
from mafs_core.io import list_pairs, read_ir, read_vis
from mafs_core.model import build_model
from mafs_core.onnx_backend import onnx_metadata, parity

HH, WW = 240, 320  # half of MSRS' 480x640: fast on a 2-core CI box


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "mafs_t.onnx"
    rc = mafs(["export-onnx", "--random-init", "--variant", "mafs_t", "--seed", "0",
               "--height", str(HH), "--width", str(WW), "--out", str(out)])
    assert rc == 0 and out.is_file()
    return out


@pytest.fixture(scope="module")
def real_pair(sample_data) -> tuple[np.ndarray, np.ndarray]:
    pair = list_pairs(sample_data / "msrs" / "ir", sample_data / "msrs" / "vi")[0]
    ir = cv2.resize(read_ir(pair.ir), (WW, HH), interpolation=cv2.INTER_AREA)
    vis = cv2.resize(read_vis(pair.vis), (WW, HH), interpolation=cv2.INTER_AREA)
    return ir, vis


@pytest.mark.timeout(600)
def test_network_parity_on_real_pair(onnx_file, real_pair):
    torch.manual_seed(0)
    model = build_model("mafs_t", num_classes=9).eval()
    ir_np, bgr = real_pair
    ir = torch.from_numpy(ir_np).float()[None, None]
    ir = (ir - ir.min()) / (ir.max() - ir.min())
    vis = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    report = parity(model, onnx_file, ir=ir, vis=vis)
    print(f"ONNX parity (mafs_t random init, MSRS {HH}x{WW}): {report}")
    assert report["fused_max_abs"] <= 1 / 255
    assert report["mask_agreement"] >= 0.999


@pytest.mark.timeout(600)
def test_onnxruntime_backend_matches_torch_engine(onnx_file, real_pair):
    ir, bgr = real_pair
    ref = FusionSegmenter.from_variant("mafs_t", seed=0, device="cpu", warmup=0).run(ir, bgr)
    ort = FusionSegmenter.from_checkpoint(onnx_file, device="cpu", warmup=0)
    assert ort.backend == "onnxruntime" and ort.variant == "mafs_t" and ort.num_classes == 9
    res = ort.run(ir, bgr)
    assert res.fused_bgr.shape == (HH, WW, 3) and res.mask.shape == (HH, WW)
    assert np.abs(res.fused_bgr.astype(int) - ref.fused_bgr.astype(int)).max() <= 1
    assert (res.mask == ref.mask).mean() >= 0.999
    np.testing.assert_array_equal(res.color, ort.palette[res.mask])


def test_onnx_metadata_travels(onnx_file):
    meta = onnx_metadata(onnx_file)
    assert meta["variant"] == "mafs_t" and meta["num_classes"] == 9 and len(meta["palette"]) == 9
    import onnx

    proto = onnx.load(str(onnx_file))
    assert [i.name for i in proto.graph.input] == ["ir", "vis"]
    assert [o.name for o in proto.graph.output] == ["fused", "logits", "fusion_head"]  # the engine composes
    dims = [d.dim_value for d in proto.graph.input[1].type.tensor_type.shape.dim]
    assert dims == [1, 3, HH, WW]  # fixed shapes by default: what TensorRT wants


def test_export_needs_weights(tmp_path, monkeypatch, capsys):
    from mafs_core import weights

    monkeypatch.setattr(weights, "weight_dirs", lambda: [tmp_path])
    assert mafs(["export-onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_fixed_shape_model_resizes_other_frame_sizes(onnx_file):
    seg = FusionSegmenter.from_checkpoint(onnx_file, device="cpu")  # warm-up runs at the model's 240x320
    rng = np.random.default_rng(0)
    ths = [rng.integers(0, 256, (100, 150), dtype=np.uint8) for _ in range(2)]
    viss = [rng.integers(0, 256, (100, 150, 3), dtype=np.uint8) for _ in range(2)]
    results = seg.run_batch(ths, viss)  # fixed batch 1: one network call per pair
    for res in results:
        assert res.fused_bgr.shape == (100, 150, 3) and res.mask.shape == (100, 150) and int(res.mask.max()) < 9


def test_infer_cli_with_onnx_model(onnx_file, sample_data, tmp_path):
    out = tmp_path / "out"
    assert mafs(["infer", "--ir", str(sample_data / "msrs" / "ir"), "--vis", str(sample_data / "msrs" / "vi"),
                 "--out", str(out), "--checkpoint", str(onnx_file), "--limit", "1", "--device", "cpu", "-q"]) == 0
    name = list_pairs(sample_data / "msrs" / "ir", sample_data / "msrs" / "vi")[0].name
    mask = cv2.imread(str(out / "mask" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (480, 640) and int(mask.max()) < 9  # network at 240x320, outputs at the RGB size
