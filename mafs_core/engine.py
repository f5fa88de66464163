"""Inference engine: raw NumPy frames in, fused image + semantic mask out, everything between on the device.

    seg = FusionSegmenter.from_checkpoint("weights/mafs_t.safetensors", device="auto")
    res = seg.run(thermal_u16, bgr_u8)          # res.fused_bgr, res.mask, res.color, res.overlay, res.timings

Pipeline per call: upload uint8/uint16 frames -> thermal normalisation -> registration (homography warp or
resize into the RGB grid) -> colour order -> resize to the working resolution (`input_size`) -> network
(optionally a CUDA graph replay) -> back at the RGB camera's resolution: the fused image composed from the
upsampled blend head and the full-resolution sources, the mask from upsampled logits (bilinear, then argmax),
confidence -> uint8 fused BGR, palette lookup, overlay -> ONE device->host copy.
Not thread-safe by design (CUDA graph buffers are shared); a lock serialises concurrent callers.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mafs_core.checkpoint import DEFAULT_THERMAL_NORM, load_checkpoint
from mafs_core.classes import default_class_names, default_palette
from mafs_core.fullres import colorize, compose_fused_bgr8, confidence, to_bgr8, upsampled_argmax
from mafs_core.preprocess import (
    ThermalNormalizer,
    as_homography,
    register_thermal,
    resize,
    resize_visible,
    to_tensor,
    visible_to_bgr8,
    visible_to_rgb,
)
from mafs_core.sizes import working_size
from mafs_core.tta import average_views, check_tta, tta_active

log = logging.getLogger(__name__)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BACKENDS = ("torch", "onnxruntime")


@dataclass
class EngineConfig:
    """Engine settings. Thermal fields left at None take the checkpoint's `thermal_norm` defaults."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "auto"  # "auto" (fp16 on CUDA, fp32 on CPU) | "fp32" | "fp16" | "bf16"
    backend: str = "torch"  # "torch" | "onnxruntime"
    onnx_path: str | None = None
    # thermal normalisation (see preprocess.ThermalNormalizer)
    thermal_norm: str | None = None  # "minmax" | "percentile" | "fixed"
    thermal_low_pct: float | None = None
    thermal_high_pct: float | None = None
    thermal_smoothing: float | None = None
    thermal_low: float | None = None
    thermal_high: float | None = None
    thermal_gain: float | None = None
    thermal_offset: float | None = None
    # 3x3 homography thermal pixels -> RGB pixels (row-major 9 values or 3x3); None = aligned rig
    homography: Any = None
    # network (H, W): "auto" = about the checkpoint's training size at the camera's aspect ratio (multiples of 32);
    # (H, W) = exactly that; None or 0 = the RGB image's own size. Outputs are always at the RGB image's size.
    input_size: Any = "auto"
    max_input_pixels: int = 8_300_000  # larger RGB frames are refused (ValueError) before any work; 0 = no limit
    overlay_alpha: float = 0.5
    overlay_background: bool = False  # also tint class 0 ("unlabelled"); off keeps the scene readable
    # test-time augmentation of the mask (mafs_core.tta): class probabilities averaged over these factors of the
    # working resolution (1.0 included), each also mirrored when tta_flip; len(scales) x (2 if flip) passes
    tta_scales: tuple[float, ...] = (1.0,)
    tta_flip: bool = False
    # speed
    fuse_bn: bool = True
    channels_last: bool = True  # weights and activations; helps on CPU (oneDNN) and GPU alike
    cuda_graphs: bool = True  # CUDA only: capture the network per input shape, replay afterwards
    max_graphs: int = 2  # captured shapes kept (alternating sizes should not re-capture every frame)
    cudnn_benchmark: bool = True  # CUDA only: autotune conv algorithms for the (fixed) camera size
    compile: bool = False
    compile_mode: str = "default"
    warmup: int = 2  # forward passes on load (and graph capture) at warmup_size
    warmup_size: tuple[int, int] | None = (480, 640)

    def thermal_kwargs(self, defaults: dict | None = None) -> dict:
        kw = dict(DEFAULT_THERMAL_NORM)
        kw.update(defaults or {})
        own = {"mode": self.thermal_norm, "low_pct": self.thermal_low_pct, "high_pct": self.thermal_high_pct,
               "smoothing": self.thermal_smoothing, "low": self.thermal_low, "high": self.thermal_high,
               "gain": self.thermal_gain, "offset": self.thermal_offset}
        kw.update({k: v for k, v in own.items() if v is not None})
        known = {f.name for f in fields(ThermalNormalizer)}
        return {k: v for k, v in kw.items() if k in known}


@dataclass
class FusionResult:
    fused_bgr: np.ndarray  # HxWx3 uint8 BGR
    mask: np.ndarray  # HxW uint8 class ids
    color: np.ndarray | None  # HxWx3 uint8 RGB palette colours
    overlay: np.ndarray | None  # HxWx3 uint8 BGR, mask colours blended on the visible image
    timings: dict[str, float] = field(default_factory=dict)  # ms: preprocess, inference, postprocess, total
    confidence: np.ndarray | None = None  # HxW uint8: max class probability x 255 (when asked for)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        d = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if d.type == "cuda":
        if not torch.cuda.is_available():
            warnings.warn(f"device {device!r} requested but CUDA is not available: running on CPU", stacklevel=3)
            return torch.device("cpu")
        index = d.index if d.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if d.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'")
    return d


def resolve_precision(precision: str, device: torch.device) -> str:
    p = precision.lower()
    if p == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if p == "fp16" and device.type == "cpu":
        warnings.warn("fp16 is not supported on CPU: using fp32", stacklevel=3)
        return "fp32"
    if p == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bf16 support: using fp32", stacklevel=3)
        return "fp32"
    return p


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One warm-up stream per device for all captures: each new stream would get its own cuBLAS workspace."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device=device)
    return _SIDE_STREAMS[device]


class _CudaGraphRunner:
    """Replays `fn` as a CUDA graph on static input buffers, one capture per input shape (LRU).

    Removes the per-layer launch overhead, which dominates small networks on big GPUs. The returned
    tensors are the graph's static outputs: consume them before the next call.
    """

    def __init__(self, fn: Callable, max_graphs: int = 2, warmup: int = 3):
        self.fn, self.max_graphs, self.warmup = fn, max_graphs, warmup
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()

    def __call__(self, ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (tuple(ir.shape), tuple(vis.shape), ir.dtype, vis.stride())
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(ir, vis)
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        graph, s_ir, s_vis, out = entry
        s_ir.copy_(ir)
        s_vis.copy_(vis)
        graph.replay()
        return out

    def _capture(self, ir: torch.Tensor, vis: torch.Tensor) -> tuple:
        s_ir, s_vis = ir.clone(), vis.clone()
        stream = _side_stream(ir.device)
        stream.wait_stream(torch.cuda.current_stream(ir.device))
        with torch.cuda.stream(stream):  # warm-up on a side stream, as the CUDA graph docs require
            for _ in range(self.warmup):
                self.fn(s_ir, s_vis)
        torch.cuda.current_stream(ir.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA work of other threads (e.g. a ROS executor) must not invalidate the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = self.fn(s_ir, s_vis)
        return graph, s_ir, s_vis, out

    def clear(self) -> None:
        self.graphs.clear()


class FusionSegmenter:
    """MAFS inference on raw camera frames; see module docstring. Build with from_checkpoint()/from_variant()."""

    def __init__(self, model: nn.Module | None, metadata: dict | None = None, config: EngineConfig | None = None,
                 *, _owns_model: bool = False):
        self.config = cfg = config or EngineConfig()
        self.metadata = meta = dict(metadata or {})
        if cfg.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {cfg.backend!r}")
        self._device = resolve_device(cfg.device)
        self._lock = threading.Lock()
        self._released = False
        self._onnx = None
        self._graphs: _CudaGraphRunner | None = None
        self._host_buf: torch.Tensor | None = None
        if cfg.backend == "onnxruntime":
            from mafs_core.onnx_backend import OnnxSession, onnx_metadata

            if not cfg.onnx_path:
                raise ValueError("backend 'onnxruntime' needs EngineConfig.onnx_path")
            want = resolve_precision(cfg.precision, self._device)
            self._onnx = OnnxSession(cfg.onnx_path, device=self._device, fp16=want == "fp16")
            meta = self.metadata = {**onnx_metadata(cfg.onnx_path), **meta}
            # I/O stays fp32; only TensorRT's provider computes in fp16 inside the graph
            trt = self._onnx.providers[0] == "TensorrtExecutionProvider"
            self._precision = want if trt and want == "fp16" else "fp32"
            self.model = None
        else:
            if model is None:
                raise ValueError("the torch backend needs a model")
            if not _owns_model:  # fuse_bn/dtype changes are in place: never alter the caller's (training) model
                model = copy.deepcopy(model)
            model.eval()
            if hasattr(model, "deploy"):  # BN folding + channels_last: ~35% faster on CPU, tensor-core layout on GPU
                model = model.deploy(channels_last=cfg.channels_last, fuse_bn=cfg.fuse_bn)
            self._precision = resolve_precision(cfg.precision, self._device)
            model = model.to(self._device, PRECISIONS[self._precision])
            if self._device.type == "cuda" and cfg.cudnn_benchmark:
                torch.backends.cudnn.benchmark = True  # process-wide; what a deployment wants anyway
            self.model = model
        self._net_size, self._auto_target = self._resolve_input_size(cfg.input_size, meta)
        mcfg = dict(meta.get("config") or {})
        if model is not None and hasattr(model, "config"):
            mcfg = {"fusion_head": model.config.fusion_head, "blend_residual": model.config.blend_residual}
        self._blend = mcfg.get("fusion_head", "direct") == "blend"
        self._residual = float(mcfg.get("blend_residual", 0.25))
        num_classes = int(meta.get("num_classes") or getattr(getattr(model, "config", None), "num_classes", 0) or 0)
        if num_classes <= 0:
            raise ValueError("cannot tell the number of classes (no metadata['num_classes'] nor model.config)")
        if num_classes > 256:
            raise ValueError(f"{num_classes} classes do not fit the uint8 mask (at most 256)")
        if not 0.0 <= cfg.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {cfg.overlay_alpha}")
        self.metadata["num_classes"] = num_classes
        self._class_names = list(meta.get("class_names") or default_class_names(num_classes))
        pal = meta.get("palette")
        self._palette = np.asarray(pal if pal is not None else default_palette(num_classes), np.uint8).reshape(-1, 3)
        if len(self._palette) < num_classes:
            raise ValueError(f"palette has {len(self._palette)} colours for {num_classes} classes")
        self._palette_t = torch.from_numpy(self._palette.copy()).to(self._device)
        self._palette_bgr_t = self._palette_t.flip(-1).contiguous()  # the overlay is BGR
        self.normalizer = ThermalNormalizer(**cfg.thermal_kwargs(meta.get("thermal_norm")))
        self.set_homography(cfg.homography)
        self._forward = self._build_forward()
        if cfg.warmup > 0 and cfg.warmup_size:
            self.warmup(self._net_size or cfg.warmup_size, cfg.warmup)

    def _resolve_input_size(self, input_size: Any, meta: dict) -> tuple[tuple[int, int] | None,
                                                                     tuple[int, int] | None]:
        """-> (fixed network size or None, target size of the automatic working resolution or None)."""
        fixed = self._onnx.fixed_size if self._onnx is not None else None
        if isinstance(input_size, str):
            if input_size != "auto":
                raise ValueError(f"input_size must be 'auto', (H, W) or None, got {input_size!r}")
            if fixed:
                return tuple(fixed), None
            val = ((meta.get("training") or {}).get("config") or {}).get("data", {}).get("val_resize")
            return None, (tuple(int(v) for v in val) if val else (480, 640))
        if not input_size:
            return (tuple(fixed) if fixed else None), None
        size = tuple(int(v) for v in input_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"input_size must be (H, W) with positive sides, got {input_size!r}")
        return size, None

    def network_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (H, W) the network runs at for an RGB frame of this size."""
        if self._net_size:
            return self._net_size
        return working_size(size, self._auto_target) if self._auto_target else (int(size[0]), int(size[1]))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, device: str = "auto", precision: str = "auto",
                        allow_pickle: bool = False, **config_overrides: Any) -> FusionSegmenter:
        """Load a checkpoint (None = the shipped default weights). An .onnx path selects the ORT backend."""
        if path is not None and str(path).endswith(".onnx"):  # only onnxruntime can run an ONNX file
            config_overrides["backend"] = "onnxruntime"
            config_overrides["onnx_path"] = config_overrides.get("onnx_path") or str(path)
        config = EngineConfig(device=device, precision=precision, **config_overrides)
        if config.backend == "onnxruntime":
            return cls(None, {}, config)
        why = "given"
        if path is None:  # mafs_s on CUDA, mafs_t on the CPU (mafs_core.weights.DEVICE_DEFAULTS)
            from mafs_core.weights import default_for_device

            path, why = default_for_device(resolve_device(device).type)
            log.info("%s: %s", why, path)
        model, meta = load_checkpoint(path, device="cpu", allow_pickle=allow_pickle)
        meta["checkpoint_path"], meta["checkpoint_choice"] = str(path), why
        return cls(model, meta, config, _owns_model=True)

    @classmethod
    def from_variant(cls, variant: str = "mafs_t", num_classes: int = 9, seed: int = 0, device: str = "auto",
                     precision: str = "auto", model_overrides: dict[str, Any] | None = None,
                     **config_overrides: Any) -> FusionSegmenter:
        """Randomly initialised network (seeded): smoke runs and benchmarks without trained weights.
        model_overrides: MAFSConfig fields, e.g. {"vis_backbone": "efficientnet_lite0"}."""
        from mafs_core.model import build_model

        with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's RNG
            torch.manual_seed(seed)
            model = build_model(variant, num_classes=num_classes, **(model_overrides or {}))
        meta = {"variant": variant, "num_classes": num_classes, "training": {"random_init": True, "seed": seed}}
        return cls(model, meta, EngineConfig(device=device, precision=precision, **config_overrides),
                   _owns_model=True)

    def _build_forward(self) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        """(ir, vis) network-resolution tensors -> (fused RGB [B,3,h,w], fusion head [B,2,h,w] or the fused image
        again where there is none, logits [B,C,h/4,w/4] or [B,C,h,w] or class ids [B,h,w] from an ids-only ONNX
        export)."""
        scales, flip = check_tta(self.config.tta_scales, self.config.tta_flip)
        tta = tta_active(scales, flip)
        if self._onnx is not None:
            if tta:
                raise ValueError("test-time augmentation (tta_scales, tta_flip) needs the torch backend")
            onnx = self._onnx

            def forward_onnx(ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, ...]:
                out = onnx.run(ir.float().cpu().numpy(), vis.float().cpu().numpy())
                fused = torch.from_numpy(out["fused"]).to(self._device)
                head = torch.from_numpy(out["fusion_head"]).to(self._device) if "fusion_head" in out else fused
                seg = out["logits"] if "logits" in out else out["class_ids"].astype(np.uint8)
                return fused, head, torch.from_numpy(seg).to(self._device)

            return forward_onnx

        model = self.model
        pm = getattr(getattr(model, "config", None), "pad_multiple", 0)

        def forward(ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # unpadded inputs (every working size is a multiple of pad_multiple) keep the decoder's 1/4 logits:
            # post-processing interpolates once, to the camera's size, instead of twice
            quarter = bool(pm) and ir.shape[-2] % pm == 0 and ir.shape[-1] % pm == 0
            out = model(ir, vis, quarter_logits=quarter)
            logits = out["logits"]
            if tta:
                logits = average_views(lambda a, b: model(a, b, quarter_logits=quarter)["logits"], ir, vis, logits,
                                       scales, flip, multiple=pm or 32)
            return out["fused"], out.get("fusion_head", out["fused"]), logits

        fn = forward
        if self.config.compile:
            fn = torch.compile(forward, mode=self.config.compile_mode, dynamic=False)
        if self._device.type == "cuda" and self.config.cuda_graphs:
            self._graphs = _CudaGraphRunner(fn, max_graphs=self.config.max_graphs)
            graphs, eager = self._graphs, fn

            def forward_graphed(ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, ...]:
                if self._graphs is None:  # capture failed earlier: stay eager
                    return eager(ir, vis)
                try:
                    return graphs(ir, vis)
                except RuntimeError as exc:
                    warnings.warn(f"CUDA graph capture failed ({exc}); running eagerly", stacklevel=2)
                    self._graphs = None
                    torch.cuda.synchronize(self._device)
                    return eager(ir, vis)

            return forward_graphed
        return fn

    # ---------------------------------------------------------------- properties
    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def palette(self) -> np.ndarray:
        return self._palette.copy()

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def variant(self) -> str:
        return str(self.metadata.get("variant") or getattr(getattr(self.model, "config", None), "variant", "?"))

    @property
    def _io_dtype(self) -> torch.dtype:
        """dtype of the network's input tensors: the model's for torch, always fp32 for onnxruntime."""
        return torch.float32 if self._onnx is not None else PRECISIONS[self._precision]

    @property
    def backend(self) -> str:
        return self.config.backend

    # ---------------------------------------------------------------- state
    def set_homography(self, homography: Any) -> None:
        """Set (or clear with None) the thermal->RGB pixel homography."""
        h = as_homography(homography)
        self.config.homography = None if h is None else h.reshape(-1).tolist()
        self._homography_t = None if h is None else torch.as_tensor(h, dtype=torch.float32, device=self._device)

    def reset(self) -> None:
        """Forget temporal state (percentile EMA): call on a new sequence or after a camera restart."""
        self.normalizer.reset()

    def warmup(self, size: tuple[int, int] = (480, 640), iters: int = 2, batch: int = 1) -> None:
        """Run the whole pipeline (upload, normalisation, network, post-processing) on dummy frames of this
        size and batch, so that the first real frame pays for no allocation, autotuning, lazy kernel loading or
        graph capture. The last pass uses a 16-bit thermal frame so both input paths are warm; the thermal
        normaliser's running state is reset afterwards."""
        h, w = int(size[0]), int(size[1])
        ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)[None].repeat(h, 0)  # not flat: min-max needs a range
        th8, th16 = (ramp * 255).astype(np.uint8), (ramp * 60000).astype(np.uint16)
        rgb = [np.repeat(th8[..., None], 3, 2)] * batch
        passes = max(1, iters)
        for i in range(passes):  # run_batch copies its results back, so each pass has finished on return
            self.run_batch([th16 if passes > 1 and i == passes - 1 else th8] * batch, rgb, "bgr8")
        self.normalizer.reset()

    def release(self) -> None:
        """Free the network, CUDA graphs and buffers (device memory goes back to the driver)."""
        with self._lock:
            self._released = True
            if self._graphs is not None:
                self._graphs.clear()
            self._graphs = None
            self.model = None
            self._onnx = None
            self._forward = None  # type: ignore[assignment]
            self._host_buf = None
            self._palette_t = self._palette_bgr_t = None  # type: ignore[assignment]
            self._homography_t = None
            self.normalizer.reset()
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
                torch.cuda.empty_cache()

    # ---------------------------------------------------------------- inference
    def run(self, thermal: np.ndarray, rgb: np.ndarray, rgb_encoding: str = "bgr8", want_color: bool = True,
            want_overlay: bool = True, want_confidence: bool = False) -> FusionResult:
        """One thermal frame (HxW uint8/uint16/float) + one visible frame -> FusionResult at the RGB size."""
        return self.run_batch([thermal], [rgb], rgb_encoding, want_color, want_overlay, want_confidence)[0]

    def run_batch(self, thermals: Sequence[np.ndarray], rgbs: Sequence[np.ndarray], rgb_encoding: str = "bgr8",
                  want_color: bool = True, want_overlay: bool = True,
                  want_confidence: bool = False) -> list[FusionResult]:
        """Several pairs in one network call when sizes agree (else one call each). Timings are per batch."""
        if len(thermals) != len(rgbs):
            raise ValueError(f"{len(thermals)} thermal frames but {len(rgbs)} visible frames")
        if not thermals:
            return []
        ths = [_check_thermal(t) for t in thermals]
        vis = [_check_visible(v, rgb_encoding, self.config.max_input_pixels) for v in rgbs]
        same = (len({t.shape for t in ths}) == 1 and len({v.shape for v in vis}) == 1
                and len({t.dtype for t in ths}) == 1)
        one_at_a_time = self._onnx is not None and self._onnx.fixed_batch == 1
        if len(ths) > 1 and (not same or one_at_a_time):
            return [self.run_batch([t], [v], rgb_encoding, want_color, want_overlay, want_confidence)[0]
                    for t, v in zip(ths, vis, strict=True)]
        with self._lock:
            if self._released:
                raise RuntimeError("FusionSegmenter was released")
            with torch.inference_mode():
                return self._run(ths, vis, rgb_encoding, want_color, want_overlay, want_confidence)

    def _run(self, ths: list[np.ndarray], viss: list[np.ndarray], encoding: str, want_color: bool,
             want_overlay: bool, want_confidence: bool) -> list[FusionResult]:
        dev, cfg = self._device, self.config
        cuda = dev.type == "cuda"
        t0 = time.perf_counter()
        marks: list[Any] = []

        def mark() -> None:
            if cuda:
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                marks.append(ev)
            else:
                marks.append(time.perf_counter())

        mark()
        # ---- preprocess: upload raw frames, normalise, register, colour order
        b = len(ths)
        th = to_tensor(np.stack(ths) if b > 1 else ths[0][None], dev)  # [B,h,w] raw counts
        vis_u8 = to_tensor(np.stack(viss) if b > 1 else viss[0][None], dev)  # [B,H,W(,C)] uint8
        size = (int(vis_u8.shape[1]), int(vis_u8.shape[2]))
        ir = self.normalizer.normalize(th)[:, None]  # [B,1,h,w] float32
        ir = register_thermal(ir, size, self._homography_t)
        vis_bgr = visible_to_bgr8(vis_u8, encoding)  # [B,H,W,3] uint8 at the camera's size (a view)
        net_size = self.network_size(size)
        dtype = self._io_dtype
        ir_n = resize(ir, net_size).to(dtype)
        vis_n = visible_to_rgb(resize_visible(vis_u8, encoding, net_size), encoding).to(dtype)  # uint8 resize
        if cuda and cfg.channels_last and self._onnx is None:
            vis_n = vis_n.contiguous(memory_format=torch.channels_last)
        mark()
        # ---- network
        fused, head, seg = self._forward(ir_n, vis_n)
        mark()
        # ---- postprocess, all on the device; the graph's static outputs are consumed here
        fused_bgr, ids, conf = self._full_resolution(fused, head, seg, ir, vis_bgr, size, want_confidence)
        parts = [fused_bgr.reshape(b, -1), ids.reshape(b, -1)]
        if conf is not None:
            parts.append(conf.reshape(b, -1))
        if want_color:
            parts.append(colorize(self._palette_t, ids).reshape(b, -1))  # [B,H,W,3] RGB: palette lookup by index
        if want_overlay:
            a = cfg.overlay_alpha * (torch.ones_like(ids) if cfg.overlay_background else (ids > 0)).to(torch.float32)
            a = a[..., None]
            colour_bgr = colorize(self._palette_bgr_t, ids).float()
            overlay = (vis_bgr.float() * (1.0 - a) + colour_bgr * a).round_().to(torch.uint8)
            parts.append(overlay.reshape(b, -1))
        flat = torch.cat(parts, 1)
        mark()
        host = self._to_host(flat)  # the one device->host copy
        if cuda:
            mark()
            marks[-1].synchronize()
        t_end = time.perf_counter()
        # ---- unpack views and timings
        h, w = size
        n3, n1 = h * w * 3, h * w
        if cuda:
            ms = [marks[i].elapsed_time(marks[i + 1]) for i in range(len(marks) - 1)]
            timings = {"preprocess": ms[0], "inference": ms[1], "postprocess": ms[2] + ms[3],
                       "device": marks[0].elapsed_time(marks[-1])}
        else:
            timings = {"preprocess": (marks[1] - marks[0]) * 1e3, "inference": (marks[2] - marks[1]) * 1e3,
                       "postprocess": (t_end - marks[2]) * 1e3}
        timings["total"] = (t_end - t0) * 1e3
        results = []
        for i in range(b):
            row, off = host[i], 0
            fb = row[off:off + n3].reshape(h, w, 3)
            off += n3
            mk = row[off:off + n1].reshape(h, w)
            off += n1
            cf = col = ov = None
            if conf is not None:
                cf = row[off:off + n1].reshape(h, w)
                off += n1
            if want_color:
                col = row[off:off + n3].reshape(h, w, 3)
                off += n3
            if want_overlay:
                ov = row[off:off + n3].reshape(h, w, 3)
            results.append(FusionResult(fb, mk, col, ov, dict(timings), cf))
        return results

    def _full_resolution(self, fused: torch.Tensor, head: torch.Tensor, seg: torch.Tensor, ir: torch.Tensor,
                         vis_bgr: torch.Tensor, size: tuple[int, int], want_confidence: bool,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Network outputs at the working resolution -> (fused bgr8, class ids uint8, confidence uint8 or None) at
        the camera's. Detail comes from the full-resolution sources, boundaries from interpolated logits."""
        if self._blend and head is not fused:  # at the network's size too: the network's own composition
            fused_bgr = compose_fused_bgr8(head, ir, vis_bgr, self._residual)
        else:  # a direct head (or an ONNX file without the head output) has nothing to compose from
            fused_bgr = to_bgr8(resize(fused.float(), size))
        if seg.dtype == torch.uint8:  # ids-only ONNX export: no logits to interpolate
            ids = resize(seg[:, None], size, mode="nearest")[:, 0] if tuple(seg.shape[-2:]) != size else seg
            return fused_bgr, ids, (torch.full_like(ids, 255) if want_confidence else None)
        return fused_bgr, upsampled_argmax(seg, size), (confidence(seg, size) if want_confidence else None)

    def _to_host(self, flat: torch.Tensor) -> np.ndarray:
        if flat.device.type == "cpu":
            return flat.numpy()
        # non-blocking copy into a reused pinned buffer, then a host-side copy so results outlive the buffer
        if self._host_buf is None or self._host_buf.numel() < flat.numel():
            self._host_buf = torch.empty(flat.numel(), dtype=torch.uint8, pin_memory=True)
        buf = self._host_buf[: flat.numel()].view(flat.shape)
        buf.copy_(flat, non_blocking=True)
        torch.cuda.current_stream(flat.device).synchronize()
        return buf.numpy().copy()

    def forward_tensors(self, ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network only, on prepared [B,1,h,w] / [B,3,h,w] RGB tensors in [0,1] (benchmarks, evaluation)
        -> (fused RGB, class ids) at the input size."""
        dtype = self._io_dtype
        ir, vis = ir.to(self._device, dtype), vis.to(self._device, dtype)
        if self._device.type == "cuda" and self.config.channels_last and self._onnx is None:
            vis = vis.contiguous(memory_format=torch.channels_last)
        with self._lock, torch.inference_mode():
            fused, _, seg = self._forward(ir, vis)
            ids = seg if seg.dtype == torch.uint8 else upsampled_argmax(seg, tuple(ir.shape[-2:]))
            return fused.float().clone(), ids.clone()

    def describe(self) -> str:
        """One line for logs: variant, device, precision, and which checkpoint and why (the default per device)."""
        where = self.metadata.get("checkpoint_path")
        why = self.metadata.get("checkpoint_choice")
        src = f"{where} ({why})" if where and why and why != "given" else (where or self.backend)
        cfg = self.config
        tta = ""
        if tta_active(cfg.tta_scales, cfg.tta_flip):  # several passes per frame: say so where the speed is read
            tta = f", test-time augmentation: scales {list(cfg.tta_scales)}" + (" + flip" if cfg.tta_flip else "")
        return f"{self.variant} on {self.device} ({self.precision}) from {src}{tta}"

    def with_config(self, **changes: Any) -> FusionSegmenter:
        """A new engine with the same weights and some settings changed."""
        if self.model is None and self._onnx is None:
            raise RuntimeError("FusionSegmenter was released")
        return FusionSegmenter(self.model, self.metadata, replace(self.config, **changes))


def _check_thermal(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    if not isinstance(t, np.ndarray):
        raise TypeError(f"thermal frame must be a NumPy array, got {type(t).__name__}")
    if t.ndim == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim != 2 or t.size == 0:
        raise ValueError(f"thermal frame must be a non-empty HxW array, got shape {t.shape}")
    if t.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64, np.float16):
        raise TypeError(f"unsupported thermal dtype {t.dtype} (use uint8, uint16 or float32)")
    return t


def _check_visible(v: Any, encoding: str, max_pixels: int = 0) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if not isinstance(v, np.ndarray):
        raise TypeError(f"visible frame must be a NumPy array, got {type(v).__name__}")
    if v.dtype != np.uint8:
        raise TypeError(f"visible frame must be uint8, got {v.dtype}")
    enc = encoding.lower()
    if enc in ("mono8", "8uc1"):
        if v.ndim == 3 and v.shape[-1] == 1:
            v = v[..., 0]
        if v.ndim != 2:
            raise ValueError(f"mono8 visible frame must be HxW, got shape {v.shape}")
    elif v.ndim != 3 or v.shape[-1] != (4 if enc in ("bgra8", "rgba8") else 3):
        raise ValueError(f"{encoding} visible frame must be HxWx{4 if 'a8' in enc else 3}, got shape {v.shape}")
    if v.size == 0:
        raise ValueError("empty visible frame")
    if max_pixels and v.shape[0] * v.shape[1] > max_pixels:
        raise ValueError(f"visible frame {v.shape[1]}x{v.shape[0]} has {v.shape[0] * v.shape[1] / 1e6:.1f} MP, "
                         f"more than max_input_pixels ({max_pixels / 1e6:.1f} MP): refused")
    return v
