"""`mafs widen`: the shipped mafs_t grown into mafs_s computes the same fused image and mask on real frames, in
eval and training mode; the copies of a channel can grow apart in training; bad targets are refused; the written
checkpoint loads in the engine and initialises `mafs train`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from mafs_core.checkpoint import load_checkpoint
from mafs_core.cli import main as mafs_main
from mafs_core.engine import FusionSegmenter
from mafs_core.model import build_model
from mafs_core.train import load_config, train
from mafs_core.weights import default_checkpoint
from mafs_core.widen import WidenError, widen

NAMES = ["00004N", "00196D"]  # a night and a day frame of data/samples/msrs
DEC_ATTN_T = "model.overrides.dec_attn=[true,true,false]"  # mafs_t's decoder layout, kept by widening


@pytest.fixture(scope="module")
def shipped() -> torch.nn.Module:
    return load_checkpoint(default_checkpoint())[0]


def _frames(sample_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Real pairs at 240x320 as network inputs in [0, 1]."""
    irs, viss = [], []
    for n in NAMES:
        ir = cv2.imread(str(sample_data / "msrs" / "ir" / f"{n}.png"), cv2.IMREAD_GRAYSCALE)
        vis = cv2.imread(str(sample_data / "msrs" / "vi" / f"{n}.png"), cv2.IMREAD_COLOR)[..., ::-1]
        irs.append(cv2.resize(ir, (320, 240), interpolation=cv2.INTER_AREA)[None] / 255.0)
        viss.append(cv2.resize(np.ascontiguousarray(vis), (320, 240), interpolation=cv2.INTER_AREA)
                    .transpose(2, 0, 1) / 255.0)
    return torch.tensor(np.stack(irs), dtype=torch.float32), torch.tensor(np.stack(viss), dtype=torch.float32)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_widened_mafs_s_computes_what_the_shipped_mafs_t_computes(shipped, sample_data: Path, mode: str) -> None:
    wide = widen(shipped, "mafs_s")
    assert wide.config.widths == (32, 64, 128, 256) and wide.config.depths == (1, 2, 4, 2)
    assert wide.config.dec_attn == shipped.config.dec_attn  # structure from the source
    assert wide.config.vis_backbone == shipped.config.vis_backbone  # a pretrained backbone is carried, not widened
    n_src, n_wide = (sum(p.numel() for n, p in m.named_parameters() if not n.startswith("backbone.net."))
                     for m in (shipped, wide))
    assert n_wide > 4 * n_src
    ir, vis = _frames(sample_data)
    for m in (shipped, wide):
        m.train(mode == "train")  # training mode: BatchNorm on the batch's own statistics
    with torch.no_grad():
        a, b = shipped(ir, vis), wide(ir, vis)
    assert (a["logits"] - b["logits"]).abs().max() < 1e-4
    assert (a["fused"] - b["fused"]).abs().max() < 1e-4  # float rounding; one 8-bit step is 3.9e-3
    assert torch.equal(a["logits"].argmax(1), b["logits"].argmax(1))
    shipped.eval()


@pytest.mark.parametrize("spread", [0.0, 0.5])
def test_channel_copies_get_different_gradients(shipped, sample_data: Path, spread: float) -> None:
    """Equal shares (spread 0) would keep every copy identical through training; unequal ones let them part."""
    wide = widen(shipped, "mafs_s", spread=spread).train()
    ir, vis = _frames(sample_data)
    out = wide(ir, vis)
    (out["logits"].square().mean() + out["fused"].mean()).backward()
    grad = wide.enc_ir.stages[1].down.pw.conv.weight.grad  # 64 wide outputs = two copies of mafs_t's 32
    first, second = grad[:32], grad[32:]
    if spread == 0.0:
        torch.testing.assert_close(first, second)
    else:
        assert (first - second).abs().max() > 1e-3 * first.abs().max()


def test_refuses_what_it_cannot_carry_over(shipped) -> None:
    with pytest.raises(WidenError, match="unknown variant"):
        widen(shipped, "mafs_xl")
    with pytest.raises(WidenError, match="shallower"):  # narrowing
        widen(build_model("mafs_s"), "mafs_t")
    with pytest.raises(WidenError, match="not a whole multiple"):  # 24 channels cannot become 32
        widen(build_model("mafs_t", widths=(24, 48, 96, 192)), "mafs_s")
    with pytest.raises(WidenError, match="spread"):
        widen(shipped, "mafs_s", spread=1.5)


def test_cli_checkpoint_loads_in_the_engine_and_starts_training(shipped, sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mafs_s_from_t.safetensors"
    assert mafs_main(["widen", str(default_checkpoint()), str(out)]) == 0
    _, meta = load_checkpoint(out)
    src_meta = load_checkpoint(default_checkpoint())[1]
    assert meta["variant"] == "mafs_s" and meta["training"]["widened_from"]["sha256"] == src_meta["sha256"]
    assert meta["training"]["widened_from"]["max_output_difference"] < 1e-4

    # The engine reads the widened layout from the checkpoint: the same mask as the shipped weights.
    ir = cv2.imread(str(sample_data / "msrs" / "ir" / f"{NAMES[0]}.png"), cv2.IMREAD_GRAYSCALE)
    bgr = cv2.imread(str(sample_data / "msrs" / "vi" / f"{NAMES[0]}.png"), cv2.IMREAD_COLOR)
    masks = [FusionSegmenter.from_checkpoint(p, device="cpu", warmup=0).run(ir, bgr).mask
             for p in (default_checkpoint(), out)]
    assert (masks[0] == masks[1]).mean() > 0.999

    # ... and `mafs train` starts mafs_s from it (structure given as a model override, as the GPU script does).
    root = tmp_path / "pairs"
    for sub in ("ir", "vi"):
        (root / sub).mkdir(parents=True)
        for n in NAMES:
            (root / sub / f"{n}.png").symlink_to(sample_data / "msrs" / sub / f"{n}.png")
    cfg = tmp_path / "widened.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"root": str(root), "sources": [{"root": ""}], "augment": {"resize": [96, 128], "crop": [64, 96]},
                 "batch_size": 2, "num_workers": 0, "val_max": 1, "val_metric_images": 1},
        "model": {"variant": "mafs_s"}, "loss": {"ohem_min_kept": 512},
        "train": {"stage": "mae", "steps": 2, "out_dir": str(tmp_path / "run"), "progress": False, "threads": 1,
                  "val_every": 1000, "ckpt_every": 1000, "init_from": str(out)}}))
    with pytest.raises(RuntimeError, match=r"model\.overrides\.dec_attn=\[true, true, false\]"):
        train(load_config(cfg))  # the plain mafs_s layout does not match: the override is needed
    layout = [DEC_ATTN_T]
    if shipped.config.vis_backbone:  # the shipped mafs_t carries a pretrained backbone (mafs add-backbone)
        layout.append(f"model.overrides.vis_backbone={shipped.config.vis_backbone}")
    train(load_config(cfg, layout))
    assert (tmp_path / "run" / "final.safetensors").is_file()
