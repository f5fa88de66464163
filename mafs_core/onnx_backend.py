"""ONNX export of the MAFS network and an onnxruntime session with the same (ir, vis) -> outputs call.

The exported graph is the network only: inputs ``ir`` [B,1,H,W] and ``vis`` [B,3,H,W] RGB float in [0,1];
outputs ``fused`` [B,3,H,W] RGB in [0,1], ``logits`` [B,C,H,W] (or ``class_ids`` [B,H,W] int64 with
outputs="ids") and, for blend-head variants, ``fusion_head`` [B,2,H,W] (the engine composes the full-resolution
fused image from it). Pre/post-processing stays in the engine, so the ORT backend and TensorRT share it.
The checkpoint metadata (classes, palette, thermal defaults) travels in the ONNX ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mafs_core.checkpoint import METADATA_KEY

OUTPUTS = ("logits", "ids")


class ExportWrapper(nn.Module):
    """Tuple outputs for the exporter (the network returns a dict with training-only entries)."""

    def __init__(self, model: nn.Module, outputs: str = "logits"):
        super().__init__()
        if outputs not in OUTPUTS:
            raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")
        self.model, self.outputs = model, outputs

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(ir, vis)
        second = out["logits"] if self.outputs == "logits" else out["logits"].argmax(1)
        if has_blend_head(self.model):
            return out["fused"], second, out["fusion_head"]
        return out["fused"], second


def has_blend_head(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "fusion_head", None) == "blend"


def export_onnx(model: nn.Module, path: str | Path, height: int = 480, width: int = 640, dynamic: bool = False,
                opset: int = 18, outputs: str = "logits", metadata: dict | None = None, batch: int = 1) -> Path:
    """Export `model` (fp32, eval, on CPU) to ONNX. Fixed shapes by default: what TensorRT likes best.

    dynamic=True marks batch, height and width dynamic (height/width then need not be multiples of 32:
    the network pads internally).
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()
    if hasattr(model, "fuse_bn"):  # folded BN: fewer nodes, and the legacy exporter needs known BN channels
        model = model.fuse_bn()
    wrapper = ExportWrapper(model, outputs).eval()
    ir = torch.rand(batch, 1, height, width)
    vis = torch.rand(batch, 3, height, width)
    out_names = ["fused", "logits" if outputs == "logits" else "class_ids"]
    if has_blend_head(model):
        out_names.append("fusion_head")
    dyn = None
    if dynamic:
        nchw = {0: "batch", 2: "height", 3: "width"}
        dyn = {"ir": nchw, "vis": nchw, "fused": nchw, **({"fusion_head": nchw} if len(out_names) > 2 else {})}
        dyn[out_names[1]] = {0: "batch", 2: "height", 3: "width"} if outputs == "logits" else \
            {0: "batch", 1: "height", 2: "width"}
    log = io.StringIO()  # the exporter prints progress lines: keep them for errors only
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        # the dynamo exporter (onnxscript): the legacy tracer loses channel counts after resizes in the fusion
        # decoder and then cannot export the parameter-free BatchNorm of PHF
        torch.onnx.export(wrapper, (ir, vis), str(path), input_names=["ir", "vis"], output_names=out_names,
                          dynamic_axes=dyn, opset_version=opset, do_constant_folding=True, dynamo=True,
                          verbose=False)
    if not path.is_file():
        raise RuntimeError(f"ONNX export wrote no file:\n{log.getvalue()}")
    proto = onnx.load(str(path))
    if metadata:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(_metadata_for_onnx(model, metadata))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "mafs_export", json.dumps({"height": height, "width": width, "dynamic": dynamic,
                                                         "opset": opset, "outputs": outputs})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _metadata_for_onnx(model: nn.Module, meta: dict) -> dict:
    """Checkpoint metadata completed from the model (class names, palette...), plus the weights' sha256."""
    from mafs_core.checkpoint import build_metadata

    out = build_metadata(model, meta)
    if meta.get("sha256"):
        out["sha256"] = meta["sha256"]
    return out


def onnx_metadata(path: str | Path) -> dict:
    """The MAFS metadata stored by export_onnx (empty dict if none)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            return json.loads(p.value)
    return {}


class OnnxSession:
    """onnxruntime session. On a GPU device: TensorRT execution provider when this onnxruntime build has it
    (Jetson: onnxruntime-gpu with TensorRT; fp16 and an engine cache next to the model), else CUDA, else CPU."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", threads: int | None = None,
                 fp16: bool = True):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        providers: list[Any] = ["CPUExecutionProvider"]
        dev = torch.device(device)
        available = ort.get_available_providers()
        if dev.type == "cuda":
            if "CUDAExecutionProvider" in available:
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": dev.index or 0}))
            if "TensorrtExecutionProvider" in available:
                cache = self.path.parent / f"{self.path.stem}.trt_cache"
                providers.insert(0, ("TensorrtExecutionProvider", {
                    "device_id": dev.index or 0, "trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache)}))
            if len(providers) == 1:
                warnings.warn("onnxruntime has no CUDA provider here: running the ONNX model on CPU", stacklevel=2)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        shape = self.session.get_inputs()[1].shape  # vis: [B,3,H,W]; ints when exported with fixed shapes
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_size = (shape[2], shape[3]) if all(isinstance(d, int) for d in shape[2:]) else None

    def run(self, ir: np.ndarray, vis: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {"ir": np.ascontiguousarray(ir, np.float32),
                                       "vis": np.ascontiguousarray(vis, np.float32)})
        return dict(zip(self.output_names, outs, strict=True))


def parity(model: nn.Module, onnx_path: str | Path, height: int = 480, width: int = 640,
           ir: torch.Tensor | None = None, vis: torch.Tensor | None = None) -> dict[str, float]:
    """PyTorch (fp32, CPU) vs onnxruntime on the same input: fused max abs diff and class-id agreement."""
    model = copy.deepcopy(model).float().cpu().eval()
    if ir is None or vis is None:
        g = torch.Generator().manual_seed(0)
        ir, vis = torch.rand(1, 1, height, width, generator=g), torch.rand(1, 3, height, width, generator=g)
    with torch.inference_mode():
        ref = model(ir.float(), vis.float())
    out = OnnxSession(onnx_path).run(ir.numpy(), vis.numpy())
    ids = out["class_ids"] if "class_ids" in out else out["logits"].argmax(1)
    return {"fused_max_abs": float(np.abs(out["fused"] - ref["fused"].numpy()).max()),
            "mask_agreement": float((ids == ref["logits"].argmax(1).numpy()).mean())}
