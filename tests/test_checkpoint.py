"""Checkpoints: round trip, strict loading, integrity (sha256), pickle refusal, malformed files, default path."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mafs_core import weights
from mafs_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, tensors_sha256
from mafs_core.model import build_model

NAMES = ["background", "car", "person", "bike", "pole"]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("mafs_t", num_classes=5).eval()
    with torch.no_grad():  # non-trivial BN statistics so that a wrong load would show
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d) and mod.running_mean is not None:
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_checkpoint(path, model, {"class_names": NAMES, "palette": PALETTE,
                                  "thermal_norm": {"mode": "percentile", "low_pct": 2.0, "high_pct": 98.0},
                                  "training": {"epochs": 3, "dataset": "unit-test"}})
    return path


def _outputs(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ir, vis = torch.rand(1, 1, 64, 96, generator=g), torch.rand(1, 3, 64, 96, generator=g)
    with torch.inference_mode():
        return m(ir, vis)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["mafs"])


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    save_file(tensors, str(path), metadata={"mafs": json.dumps(meta)})


def test_round_trip_identical_outputs(model, ckpt):
    loaded, meta = load_checkpoint(ckpt)
    assert not loaded.training
    a, b = _outputs(model), _outputs(loaded)
    assert torch.equal(a["fused"], b["fused"]) and torch.equal(a["logits"], b["logits"])
    assert meta["variant"] == "mafs_t" and meta["num_classes"] == 5
    assert meta["class_names"] == NAMES and meta["palette"] == PALETTE
    assert meta["thermal_norm"]["mode"] == "percentile"
    assert meta["training"] == {"epochs": 3, "dataset": "unit-test"}
    assert meta["config"]["widths"] == list(model.config.widths)
    assert meta["sha256"] == tensors_sha256(model.state_dict())


def test_half_params_halve_the_file_and_load_as_float32(model, ckpt, tmp_path):
    """Shipped weights store parameters as float16; BN statistics keep float32 (running variances pass 65504)."""
    model = copy.deepcopy(model)  # the module's fixture stays as the other tests saved it
    with torch.no_grad():
        model.fusion.refine0.bn.running_var[0] = 1e5  # a real one reached 5e4: float16 would make it inf
    half = tmp_path / "half.safetensors"
    save_checkpoint(half, model, {"class_names": NAMES, "palette": PALETTE}, half_params=True)
    tensors, meta = _read(half)
    assert meta["stored_params"] == "float16"
    params = dict(model.named_parameters())
    assert all(t.dtype == (torch.float16 if k in params else model.state_dict()[k].dtype) for k, t in tensors.items())
    assert half.stat().st_size < 0.6 * ckpt.stat().st_size
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert float(loaded.fusion.refine0.bn.running_var[0]) == 1e5
    a, b = _outputs(model), _outputs(loaded)
    assert (a["logits"] - b["logits"]).abs().max() < 1e-2 * a["logits"].abs().max()
    save_checkpoint(tmp_path / "again.safetensors", loaded)  # a re-save of the loaded network is float32 again
    assert "stored_params" not in _read(tmp_path / "again.safetensors")[1]


def test_metadata_defaults_and_validation(model, tmp_path):
    save_checkpoint(tmp_path / "d.safetensors", model)
    _, meta = load_checkpoint(tmp_path / "d.safetensors")
    assert len(meta["class_names"]) == 5 and len(meta["palette"]) == 5 and meta["thermal_norm"]["mode"] == "minmax"
    with pytest.raises(ValueError, match="class_names"):
        save_checkpoint(tmp_path / "bad.safetensors", model, {"class_names": ["a", "b"]})


def test_strict_load_names_missing_and_unexpected_keys(ckpt, tmp_path):
    tensors, meta = _read(ckpt)
    dropped = sorted(tensors)[3]
    del tensors[dropped]
    tensors["extra.head.weight"] = torch.zeros(3)
    meta["sha256"] = tensors_sha256(tensors)  # integrity is fine: the structure is not
    bad = tmp_path / "strict.safetensors"
    _write(bad, tensors, meta)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    msg = str(err.value)
    assert dropped in msg and "extra.head.weight" in msg and "missing" in msg and "unexpected" in msg
    assert str(bad) in msg


def test_shape_mismatch_is_named(ckpt, tmp_path):
    tensors, meta = _read(ckpt)
    meta["config"]["num_classes"] = 7  # the head would need 7 outputs, the file has 5
    meta["num_classes"] = 7
    bad = tmp_path / "shape.safetensors"
    _write(bad, tensors, meta)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(bad)


def test_sha_mismatch(ckpt, tmp_path):
    tensors, meta = _read(ckpt)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    bad = tmp_path / "tampered.safetensors"
    _write(bad, tensors, meta)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(bad)


def test_pickle_refused_unless_allowed(model, ckpt, tmp_path):
    _, meta = load_checkpoint(ckpt)
    pt = tmp_path / "m.pt"
    torch.save({"model": model.state_dict(), "metadata": meta}, pt)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load_checkpoint(pt)
    loaded, meta2 = load_checkpoint(pt, allow_pickle=True)
    assert meta2["class_names"] == NAMES
    assert torch.equal(_outputs(loaded)["fused"], _outputs(model)["fused"])


def test_truncated_and_garbage_files(ckpt, tmp_path):
    data = ckpt.read_bytes()
    for name, blob in (("trunc.safetensors", data[: len(data) // 2]), ("head.safetensors", data[:100]),
                       ("tiny.safetensors", data[:5]), ("garbage.safetensors", b"\x00" * 64 + b"not a file" * 50)):
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert name in str(err.value)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_safetensors_without_mafs_metadata(model, tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="metadata"):
        load_checkpoint(path)


def test_default_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "weight_dirs", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError) as err:
        weights.default_checkpoint()
    assert str(tmp_path / "a") in str(err.value) and "--checkpoint" in str(err.value)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / weights.DEFAULT_WEIGHTS).write_bytes(b"x")
    assert weights.default_checkpoint() == tmp_path / "b" / weights.DEFAULT_WEIGHTS


def test_weight_dirs_are_the_env_alone_else_source_tree_and_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("MAFS_WEIGHTS_DIR", str(tmp_path))
    assert weights.weight_dirs() == [tmp_path]
    monkeypatch.delenv("MAFS_WEIGHTS_DIR")
    monkeypatch.setenv("AMENT_PREFIX_PATH", "/opt/ws/install/mafs_ros")
    dirs = weights.weight_dirs()
    assert dirs[0] == Path(weights.__file__).resolve().parent.parent / "weights"
    assert Path("/opt/ws/install/mafs_ros/share/mafs_ros/weights") in dirs
