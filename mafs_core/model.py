"""The MAFS network: masked-autoencoder-based infrared-visible fusion + semantic segmentation.

A clean, robot-sized re-implementation of the method (two modality encoders with SFE stems and four
stages, DEM exchange and CAM fusion per stage, AFM + PHF fusion decoder, multi-stage Transformer
segmentation decoder, Stage-I reconstruction heads). Variants `mafs_t/s/b` share the same blocks
(mafs_core/blocks.py); docs/architecture.md maps classes to the paper's modules.

    model = build_model("mafs_s", num_classes=9)
    out = model(ir, vis)            # ir [B,1,H,W], vis [B,3,H,W] RGB, both float in [0,1]
    out["fused"], out["logits"]     # [B,3,H,W] RGB in [0,1], [B,C,H,W]
    out["fusion_head"]              # [B,2,H,W] blend head (thermal share, residual): compose_fused_y()
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import kornia.color
import torch
import torch.nn.functional as F
from torch import nn

from mafs_core.backbone import BACKBONES, SegBackbone
from mafs_core.blocks import (
    AFM,
    CAM,
    DEM,
    PHF,
    SFE,
    ConvBNAct,
    DWBlock,
    Stage,
    TransformerBlock,
    fuse_bn_,
    upsample_like,
)

MODES = ("joint", "mae")


@dataclass(frozen=True)
class MAFSConfig:
    """Everything that defines a MAFS network (stored in checkpoints via `to_dict`). Defaults = mafs_s."""

    variant: str = "mafs_s"
    num_classes: int = 9
    sfe_channels: tuple[int, int] = (16, 32)  # shallow features at full and 1/2 resolution
    widths: tuple[int, int, int, int] = (32, 64, 128, 256)  # encoder stages at 1/4, 1/8, 1/16, 1/32
    depths: tuple[int, int, int, int] = (1, 2, 4, 2)
    expand: float = 2.0  # DWBlock / MixFFN expansion
    cam_attn: tuple[bool, bool, bool, bool] = (False, False, True, True)  # CAM uses attention at this stage
    cam_pool: tuple[int, int, int, int] = (1, 1, 2, 1)  # key/value pooling of CAM attention per stage
    dec_dim: int = 128  # segmentation decoder width
    dec_attn: tuple[bool, bool, bool] = (True, True, True)  # Transformer block at 1/32, 1/16, 1/8
    dec_pool: tuple[int, int, int] = (1, 2, 4)  # key/value pooling at 1/32, 1/16, 1/8
    head_dim: int = 32
    phf_hidden: int = 32
    mae_dim: int = 32  # Stage-I reconstruction decoder width
    aux_heads: bool = True  # auxiliary seg heads at 1/16 and 1/8 (training only)
    pad_multiple: int = 32
    pad_mode: str = "replicate"  # "replicate" works for any size; "reflect" needs pad < image size
    # Fusion output: "blend" = per-pixel convex weight of IR and visible luminance + a bounded residual
    # (source detail reaches the output at full resolution, so it cannot blur; pixel-max and mean fusion are
    # special cases); "direct" = sigmoid luminance (the first checkpoints, which do not store this field).
    fusion_head: str = "direct"
    blend_residual: float = 0.25
    # "" or "efficientnet_lite0": an ImageNet-pretrained network whose features join the segmentation decoder's
    # input (mafs_core/backbone.py; `mafs add-backbone` adds one to trained weights)
    vis_backbone: str = ""

    def __post_init__(self) -> None:
        # JSON/YAML round-trips give lists: normalise to tuples so configs compare and hash.
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        for name, n in (("widths", 4), ("depths", 4), ("cam_attn", 4), ("cam_pool", 4), ("dec_attn", 3),
                        ("dec_pool", 3), ("sfe_channels", 2)):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs {n} entries, got {getattr(self, name)}")
        # Pooled maps must tile exactly: the padded input is a multiple of pad_multiple.
        for stride, pool in zip((4, 8, 16, 32), self.cam_pool, strict=True):
            if (self.pad_multiple // stride) % pool:
                raise ValueError(f"cam_pool {pool} at 1/{stride} needs pad_multiple divisible by {stride * pool}")
        for stride, pool in zip((32, 16, 8), self.dec_pool, strict=True):
            if (self.pad_multiple // stride) % pool:
                raise ValueError(f"dec_pool {pool} at 1/{stride} needs pad_multiple divisible by {stride * pool}")
        if self.vis_backbone not in BACKBONES:
            raise ValueError(f"vis_backbone must be one of {BACKBONES}, got {self.vis_backbone!r}")
        if self.pad_mode not in ("replicate", "reflect"):
            raise ValueError(f"pad_mode must be 'replicate' or 'reflect', got {self.pad_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MAFSConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MAFSConfig keys: {sorted(unknown)}")
        return cls(**d)


VARIANTS: dict[str, MAFSConfig] = {
    # real-time on an embedded GPU, usable on a CPU
    "mafs_t": MAFSConfig(variant="mafs_t", sfe_channels=(8, 16), widths=(16, 32, 64, 128), depths=(1, 1, 2, 1),
                         dec_dim=64, dec_attn=(True, True, False), phf_hidden=16, mae_dim=24, fusion_head="blend"),
    # default: ~5x the capacity of mafs_t, still well inside the CPU (<= 600 ms) and GPU (<= 4 ms fp16) budgets
    "mafs_s": MAFSConfig(variant="mafs_s", fusion_head="blend"),  # otherwise the dataclass defaults
    # closest to the paper's capacity (GPU)
    "mafs_b": MAFSConfig(variant="mafs_b", sfe_channels=(24, 48), widths=(64, 128, 256, 512), depths=(2, 2, 8, 2),
                         expand=3.0, cam_attn=(False, True, True, True), cam_pool=(1, 4, 2, 1), dec_dim=256,
                         phf_hidden=64, mae_dim=64, fusion_head="blend"),
}


def restore_color(y: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """Fused RGB from the network's luminance `y` [B,1,H,W] and the visible image's chroma (CbCr).

    Replacing Y in YCbCr and converting back is linear, and every RGB channel depends on Y with
    weight 1, so it equals `vis + (y - Y(vis))`: 3 elementwise kernels instead of ~15 at full
    resolution. Y(vis) is kornia's BT.601 luma; tests check the result against kornia's round trip.
    """
    return (vis + (y - kornia.color.rgb_to_y(vis))).clamp(0.0, 1.0)


class Encoder(nn.Module):
    """One modality's encoder: SFE stem (full, 1/2) + four stages (1/4 .. 1/32)."""

    def __init__(self, cin: int, cfg: MAFSConfig):
        super().__init__()
        c0, c1 = cfg.sfe_channels
        self.sfe = SFE(cin, c0, c1)
        cins = (c1, *cfg.widths[:-1])
        self.stages = nn.ModuleList(Stage(i, o, d, cfg.expand) for i, o, d in zip(cins, cfg.widths, cfg.depths,
                                                                                    strict=True))


class SegDecoder(nn.Module):
    """Multi-stage Transformer decoder: top-down from 1/32 with attention at coarse scales (pooled K/V),
    progressive upsampling and multi-scale aggregation at 1/4."""

    def __init__(self, cfg: MAFSConfig):
        super().__init__()
        d = cfg.dec_dim
        self.lateral = nn.ModuleList(ConvBNAct(w, d, 1, act=None) for w in cfg.widths)
        blocks: list[nn.Module] = [DWBlock(d, cfg.expand)]  # 1/4: convolution only
        for attn, pool in zip(reversed(cfg.dec_attn), reversed(cfg.dec_pool), strict=True):  # 1/8, 1/16, 1/32
            blocks.append(TransformerBlock(d, cfg.head_dim, pool, cfg.expand) if attn else DWBlock(d, cfg.expand))
        self.blocks = nn.ModuleList(blocks)
        # Aggregation = 1x1 conv over the concatenated scales. Linear maps commute with bilinear
        # upsampling, so each scale is projected at its own resolution and summed: same function, ~4x cheaper.
        self.agg = nn.ModuleList(nn.Conv2d(d, d, 1, bias=False) for _ in range(4))
        self.agg_bn = nn.BatchNorm2d(d)
        self.head = nn.Conv2d(d, cfg.num_classes, 1)
        self.aux = nn.ModuleList(nn.Conv2d(d, cfg.num_classes, 1) for _ in range(2)) if cfg.aux_heads else None

    def forward(self, feats: list[torch.Tensor], with_aux: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """feats: fused features at 1/4..1/32 -> (semantic feature at 1/4, logits at 1/4, [aux 1/16, aux 1/8])."""
        x = self.blocks[3](self.lateral[3](feats[3]))
        outs = [x]
        for i in (2, 1, 0):
            x = self.blocks[i](upsample_like(x, feats[i]) + self.lateral[i](feats[i]))
            outs.append(x)  # 1/32, 1/16, 1/8, 1/4
        agg = self.agg[0](outs[3])
        for i in (1, 2, 3):
            agg = agg + upsample_like(self.agg[i](outs[3 - i]), agg)
        sem = F.relu(self.agg_bn(agg))
        aux = [self.aux[0](outs[1]), self.aux[1](outs[2])] if with_aux and self.aux is not None else []
        return sem, self.head(sem), aux


class FusionDecoder(nn.Module):
    """AFM on the shallow IR/VIS features, PHF modulation by the deep semantics, luminance head (sigmoid)."""

    def __init__(self, cfg: MAFSConfig):
        super().__init__()
        c0, c1 = cfg.sfe_channels
        self.afm1, self.afm0 = AFM(c1), AFM(c0)
        self.phf1 = PHF(c1, cfg.dec_dim, cfg.phf_hidden)
        self.refine1 = DWBlock(c1, cfg.expand)
        self.up = nn.Conv2d(c1, c0, 1)  # applied at 1/2 before upsampling (commutes, 4x cheaper)
        self.phf0 = PHF(c0, c1, cfg.phf_hidden)
        self.refine0 = ConvBNAct(c0, c0, 3)
        if cfg.fusion_head not in ("blend", "direct"):
            raise ValueError(f"fusion_head must be 'blend' or 'direct', got {cfg.fusion_head!r}")
        self.blend = cfg.fusion_head == "blend"
        self.residual = cfg.blend_residual
        self.out = nn.Conv2d(c0, 2 if self.blend else 1, 3, padding=1)

    def forward(self, ir0: torch.Tensor, vis0: torch.Tensor, ir1: torch.Tensor, vis1: torch.Tensor,
                sem: torch.Tensor, ir: torch.Tensor, vis_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (fused luminance, the head's raw output for compose_fused_y)."""
        h1 = self.refine1(self.phf1(self.afm1(ir1, vis1), sem))  # 1/2: semantics from the seg decoder (1/4)
        h0 = self.afm0(ir0, vis0) + upsample_like(self.up(h1), ir0)
        h0 = self.refine0(self.phf0(h0, h1))  # full res: modulated by the semantically fused 1/2 features
        o = self.out(h0)
        return compose_fused_y(o, ir, vis_y, self.blend, self.residual), o


def compose_fused_y(head: torch.Tensor, ir: torch.Tensor, vis_y: torch.Tensor, blend: bool = True,
                    residual: float = 0.25) -> torch.Tensor:
    """Fused luminance from the fusion head's raw output.

    The blend head predicts, per pixel, the thermal share and a small residual; both are smooth maps, so the
    engine upsamples them from the network's working resolution and composes with the full-resolution
    sources: the fused image's detail then comes from the camera pixels, not from upsampling.
    """
    if not blend:
        return torch.sigmoid(head)
    a = torch.sigmoid(head[:, :1])  # per-pixel share of the thermal luminance
    return (a * ir + (1 - a) * vis_y + residual * torch.tanh(head[:, 1:])).clamp(0.0, 1.0)


class ReconDecoder(nn.Module):
    """Stage-I (MAE) reconstruction head: light FPN over one modality's encoder features -> image."""

    def __init__(self, cfg: MAFSConfig, out_ch: int):
        super().__init__()
        m = cfg.mae_dim
        self.lateral = nn.ModuleList(nn.Conv2d(w, m, 1) for w in cfg.widths)
        self.block = DWBlock(m, cfg.expand)
        self.lateral_half = nn.Conv2d(cfg.sfe_channels[1], m, 1)
        self.refine = ConvBNAct(m, m, 3)
        self.out = nn.Conv2d(m, out_ch * 4, 1)

    def forward(self, half: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[3](feats[3])
        for i in (2, 1, 0):
            x = upsample_like(x, feats[i]) + self.lateral[i](feats[i])
        x = self.block(x)
        x = self.refine(upsample_like(x, half) + self.lateral_half(half))
        return torch.sigmoid(F.pixel_shuffle(self.out(x), 2))


class MAFS(nn.Module):
    """Two encoders exchanging features (DEM) and fused by CAM, a segmentation and a fusion sub-network,
    and Stage-I reconstruction heads. See module docstring for the I/O contract."""

    def __init__(self, config: MAFSConfig):
        super().__init__()
        self.config = config
        self.channels_last = False  # set by deploy(): inputs are converted to match the weights' layout
        self.enc_ir = Encoder(1, config)
        self.enc_vis = Encoder(3, config)
        self.dem = nn.ModuleList(DEM(w) for w in config.widths)
        self.cam = nn.ModuleList(CAM(w, a, config.head_dim, p, config.expand)
                                 for w, a, p in zip(config.widths, config.cam_attn, config.cam_pool, strict=True))
        self.backbone = SegBackbone(config.vis_backbone, config.widths) if config.vis_backbone else None
        self.seg = SegDecoder(config)
        self.fusion = FusionDecoder(config)
        self.rec_ir = ReconDecoder(config, 1)
        self.rec_vis = ReconDecoder(config, 3)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, PHF):
                m.init_identity()
        # Class heads start near a uniform prediction: kaiming fan_out on a 1x1 head gave logits with CE ~20
        # and gradient norms ~300 in the first steps, which also misled the task balancing (docs/training.md).
        heads = [self.seg.head, *(self.seg.aux or [])]
        if self.fusion.blend:  # start at mean fusion with no residual
            heads.append(self.fusion.out)
        for head in heads:
            nn.init.normal_(head.weight, std=0.01)
        if self.backbone is not None:
            self.backbone.zero_projections()

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.config.pad_multiple
        return F.pad(x, (0, (-w) % m, 0, (-h) % m), mode=self.config.pad_mode)

    def encode(self, ir: torch.Tensor, vis: torch.Tensor, cross_attend: bool = True) -> dict[str, Any]:
        """Shared encoders: SFE, then per stage IR/VIS stage -> DEM exchange (-> CAM fusion)."""
        ir0, ir1 = self.enc_ir.sfe(ir)
        vis0, vis1 = self.enc_vis.sfe(vis)
        a, b = ir1, vis1
        feats_ir, feats_vis, fused = [], [], []
        for i in range(4):
            a, b = self.dem[i](self.enc_ir.stages[i](a), self.enc_vis.stages[i](b))
            feats_ir.append(a)
            feats_vis.append(b)
            if cross_attend:
                fused.append(self.cam[i](a, b))
        return {"ir0": ir0, "ir1": ir1, "vis0": vis0, "vis1": vis1, "ir": feats_ir, "vis": feats_vis, "fused": fused}

    def forward(self, ir: torch.Tensor, vis: torch.Tensor, mode: str = "joint",
                quarter_logits: bool = False) -> dict[str, Any]:
        """quarter_logits: return the decoder's 1/4-resolution logits as they are, for an input that needs no
        padding; the engine then interpolates them once, straight to the camera's size (fullres.py)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if ir.dim() != 4 or ir.shape[1] != 1 or vis.dim() != 4 or vis.shape[1] != 3:
            raise ValueError(f"expected ir [B,1,H,W] and vis [B,3,H,W], got {tuple(ir.shape)} and {tuple(vis.shape)}")
        if ir.shape[0] != vis.shape[0] or ir.shape[-2:] != vis.shape[-2:]:
            raise ValueError(f"ir {tuple(ir.shape)} and vis {tuple(vis.shape)} must share batch and size")
        h, w = ir.shape[-2:]
        size = (h + (-h) % self.config.pad_multiple, w + (-w) % self.config.pad_multiple)
        if quarter_logits and size != (h, w):
            raise ValueError(f"quarter_logits needs an input that is a multiple of {self.config.pad_multiple}, "
                             f"got {h}x{w}")
        ir_p, vis_p = self._pad(ir), self._pad(vis)
        if self.channels_last:
            ir_p = ir_p.contiguous(memory_format=torch.channels_last)
            vis_p = vis_p.contiguous(memory_format=torch.channels_last)
        e = self.encode(ir_p, vis_p, cross_attend=mode == "joint")
        if mode == "mae":
            return {"rec_ir": self.rec_ir(e["ir1"], e["ir"])[..., :h, :w],
                    "rec_vis": self.rec_vis(e["vis1"], e["vis"])[..., :h, :w]}
        vis_y = kornia.color.rgb_to_y(vis_p)
        fused = e["fused"] if self.backbone is None else self.backbone(ir_p, vis_p, vis_y, e["fused"])
        sem, logits, aux = self.seg(fused, with_aux=self.training)
        y, head = self.fusion(e["ir0"], e["vis0"], e["ir1"], e["vis1"], sem, ir_p, vis_y)
        y, head = y[..., :h, :w], head[..., :h, :w]
        if not quarter_logits:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[..., :h, :w]
        aux_logits = [F.interpolate(a, size=size, mode="bilinear", align_corners=False)[..., :h, :w] for a in aux]
        return {"fused_y": y, "fused": restore_color(y, vis), "fusion_head": head, "logits": logits,
                "aux_logits": aux_logits}

    def fuse_bn(self) -> MAFS:
        """Fold conv+BN pairs for inference (eval only; the state_dict changes, so save before fusing)."""
        if self.training:
            raise RuntimeError("fuse_bn() is for inference: call model.eval() first")
        return fuse_bn_(self)

    def deploy(self, channels_last: bool = True, fuse_bn: bool = True) -> MAFS:
        """Inference-only speed-ups: eval, BN folding, channels_last weights and activations.

        channels_last is ~30% faster on CPU (oneDNN avoids NCHW reorders on thin full-resolution maps)
        and is the tensor-core layout on GPU. Not for training/saving: safetensors needs contiguous
        tensors, and the folded state_dict no longer matches the checkpoint.
        """
        self.eval()
        if fuse_bn:
            self.fuse_bn()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        return self


def build_model(name: str = "mafs_s", num_classes: int = 9, **overrides: Any) -> MAFS:
    """Build a named variant (`mafs_t`, `mafs_s`, `mafs_b`) with any class count and config overrides."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    return MAFS(replace(VARIANTS[name], num_classes=num_classes, **overrides))
