"""MAFS checkpoints: safetensors weights + one JSON metadata block, verified and loaded strictly.

safetensors metadata is str->str, so everything lives under one key ``mafs`` holding a JSON string:
variant, config (dataclasses.asdict of MAFSConfig), num_classes, class_names, palette, thermal_norm
(defaults for the engine's ThermalNormalizer), training (free provenance dict) and sha256 of the tensors.
Pickle files (.pt/.pth) can run arbitrary code when loaded, so they are refused unless the caller opts in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mafs_core.classes import default_class_names, default_palette
from mafs_core.io import jsonable

FORMAT = "mafs-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "mafs"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")
# what a checkpoint made from another one (`mafs widen`, `mafs add-backbone`) carries over from its source
CARRIED_METADATA = ("class_names", "palette", "thermal_norm")
DEFAULT_THERMAL_NORM: dict[str, Any] = {"mode": "minmax"}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: malformed, corrupt, incompatible or refused (pickle)."""


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor in name order: independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def build_metadata(model: nn.Module, metadata: dict | None = None) -> dict:
    """Complete a (possibly partial) metadata dict from the model's config."""
    meta = dict(metadata or {})
    cfg = getattr(model, "config", None)
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(meta.get("config") or {})
    num_classes = int(meta.get("num_classes") or config.get("num_classes") or 0)
    if num_classes <= 0:
        raise ValueError("metadata needs num_classes (or a model whose config has it)")
    variant = meta.get("variant") or config.get("name") or config.get("variant")
    if not variant:
        raise ValueError("metadata needs the model variant name (e.g. 'mafs_t')")
    class_names = list(meta.get("class_names") or default_class_names(num_classes))
    palette = np.asarray(meta.get("palette") if meta.get("palette") is not None else default_palette(num_classes))
    if len(class_names) != num_classes or palette.shape != (num_classes, 3):
        raise ValueError(f"class_names ({len(class_names)}) and palette {palette.shape} must match "
                         f"num_classes={num_classes}")
    return jsonable({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "variant": variant,
        "config": config,
        "num_classes": num_classes,
        "class_names": class_names,
        "palette": palette.astype(int).tolist(),
        "thermal_norm": dict(meta.get("thermal_norm") or DEFAULT_THERMAL_NORM),
        "training": dict(meta.get("training") or {}),
    })


def save_checkpoint(path: str | Path, model: nn.Module, metadata: dict | None = None,
                    half_params: bool = False) -> None:
    """Write `model`'s weights and metadata as a safetensors file (written to a temp name, then renamed).
    half_params: store learnt parameters as float16 (half the file; loading casts them back to the model's dtype).
    Buffers stay as they are: BN running variances reach past float16's 65504."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = build_metadata(model, metadata)
    # clone: safetensors refuses shared storage (tied weights), and the hash must see CPU bytes
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    if half_params:
        for name, _ in model.named_parameters():
            tensors[name] = tensors[name].half()
        meta["stored_params"] = "float16"
    meta["sha256"] = tensors_sha256(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    tmp.replace(path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    # check the framing ourselves first: safetensors' own messages do not say which file or what is wrong
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 1024 * 1024:
            raise CheckpointError(f"{path}: not a safetensors file or truncated (header claims {n} bytes, "
                                  f"file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from exc
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and 8 + n + max(ends) > size:
        raise CheckpointError(f"{path}: truncated: tensors need {8 + n + max(ends)} bytes, file has {size}")
    raw_meta = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw_meta is None:
        raise CheckpointError(f"{path}: safetensors file without MAFS metadata (no '{METADATA_KEY}' key); "
                              "was it written by mafs_core.checkpoint.save_checkpoint?")
    try:
        meta = json.loads(raw_meta)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: MAFS metadata is not valid JSON ({exc})") from exc
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({exc})") from exc
    return tensors, meta


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot unpickle ({exc})") from exc
    if isinstance(obj, dict) and any(k in obj for k in ("model", "state_dict")):
        sd = obj.get("model", obj.get("state_dict"))
        meta = obj.get("metadata") or obj.get(METADATA_KEY) or {}
    else:
        sd, meta = obj, {}
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a state_dict or {{'model': state_dict, 'metadata': {{...}}}}")
    if isinstance(meta, str):
        meta = json.loads(meta)
    if not meta.get("variant"):
        raise CheckpointError(f"{path}: pickle checkpoint has no metadata with the model variant; "
                              "convert it with save_checkpoint() to safetensors")
    meta.setdefault("num_classes", int(meta.get("config", {}).get("num_classes", 0)) or None)
    return dict(sd), meta


def model_from_metadata(meta: dict) -> nn.Module:
    """Build an uninitialised MAFS network described by checkpoint metadata."""
    from mafs_core.model import MAFS, VARIANTS, MAFSConfig, build_model

    variant, config = meta.get("variant"), meta.get("config")
    if config:
        return MAFS(MAFSConfig.from_dict(config))
    if variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    return build_model(variant, num_classes=int(meta["num_classes"]))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", allow_pickle: bool = False,
                    ) -> tuple[nn.Module, dict]:
    """Load a checkpoint strictly: every tensor must match the network exactly; returns (model.eval(), metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise CheckpointError(f"{path}: refusing to load a pickle checkpoint ({path.suffix}): unpickling runs "
                                  "arbitrary code. Pass allow_pickle=True (CLI: --allow-pickle) if you trust it, "
                                  "or convert it to .safetensors with mafs_core.checkpoint.save_checkpoint")
        tensors, meta = _read_pickle(path)
    else:
        tensors, meta = _read_safetensors(path)
        want = meta.get("sha256")
        if not want:
            raise CheckpointError(f"{path}: metadata has no sha256 of the tensors")
        got = tensors_sha256(tensors)
        if got != want:
            raise CheckpointError(f"{path}: sha256 mismatch: metadata says {want[:16]}..., tensors hash to "
                                  f"{got[:16]}...; the file is corrupt or was modified")
    try:
        model = model_from_metadata(meta)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: metadata does not describe a buildable MAFS model ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shape_bad = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or shape_bad:
        def _fmt(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt(unexpected)}")
        if shape_bad:
            parts.append("shape mismatch: " + _fmt(
                [f"{k} {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}" for k in shape_bad]))
        raise CheckpointError(f"{path}: weights do not match variant {meta.get('variant')!r}: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)
    meta = _complete_metadata(meta, model)
    return model.to(device).eval(), meta


def _complete_metadata(meta: dict, model: nn.Module) -> dict:
    meta = dict(meta)
    n = int(meta.get("num_classes") or getattr(getattr(model, "config", None), "num_classes", 0))
    meta["num_classes"] = n
    meta.setdefault("class_names", default_class_names(n))
    if meta.get("palette") is None:
        meta["palette"] = default_palette(n).tolist()
    meta.setdefault("thermal_norm", dict(DEFAULT_THERMAL_NORM))
    meta.setdefault("training", {})
    return meta
