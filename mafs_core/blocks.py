"""Small reusable building blocks of the MAFS network.

Everything here is plain conv/BN/matmul so the network exports to ONNX (opset 17+), runs under
torch.compile / CUDA graphs (static shapes, no `.item()`, no Python branches on tensor values) and
stays channels_last friendly. Paper module names are given in each docstring; see docs/architecture.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a conv with `bn` (eval statistics) folded in: one kernel instead of two at inference."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bias * scale + shift)
    return fused


class ConvBNAct(nn.Module):
    """Conv2d + BatchNorm + optional activation; `fuse()` folds the BN for deployment."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: str | None = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)
        self.act: nn.Module = {"relu": nn.ReLU(inplace=True), "relu6": nn.ReLU6(inplace=True), "gelu": nn.GELU(),
                                None: nn.Identity()}[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = _fold_bn(self.conv, self.bn)
            self.bn = nn.Identity()


class DWBlock(nn.Module):
    """Residual depthwise-separable block (dw3x3-BN -> pw expand-ReLU -> pw project-BN, + skip).

    The workhorse of the encoders and decoders: few kernels, cheap on CPU and GPU.
    """

    def __init__(self, dim: int, expand: float = 2.0, k: int = 3):
        super().__init__()
        hidden = round(dim * expand)
        self.dw = ConvBNAct(dim, dim, k, groups=dim, act=None)
        self.pw1 = ConvBNAct(dim, hidden, 1, act="relu")
        self.pw2 = ConvBNAct(hidden, dim, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.pw1(self.dw(x)))


class Down(nn.Module):
    """Stride-2 downsampling: dw3x3/2 + BN then pw to the new width (+ReLU)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dw = ConvBNAct(cin, cin, 3, stride=2, groups=cin, act=None)
        self.pw = ConvBNAct(cin, cout, 1, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class SFE(nn.Module):
    """Shallow feature extraction (paper: SFE): features at full and 1/2 resolution.

    Full-resolution work is kept to one dense 3x3 conv because it dominates CPU latency.
    """

    def __init__(self, cin: int, c0: int, c1: int):
        super().__init__()
        self.full = ConvBNAct(cin, c0, 3)
        self.down = ConvBNAct(c0, c1, 3, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = self.full(x)
        return f0, self.down(f0)


class Stage(nn.Module):
    """One encoder stage: downsample x2 then `depth` DWBlocks."""

    def __init__(self, cin: int, cout: int, depth: int, expand: float):
        super().__init__()
        self.down = Down(cin, cout)
        self.blocks = nn.Sequential(*[DWBlock(cout, expand) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class DEM(nn.Module):
    """Dynamic feature exchange module (paper: DEM) between the thermal and visible encoders.

    Channel gates (from pooled statistics of both modalities) times spatial gates (3x3 conv on both)
    decide, per channel and per pixel, how much of the other modality each stream takes in.
    """

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        hidden = max(8, dim // reduction)
        self.channel = nn.Sequential(nn.Conv2d(2 * dim, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, 2 * dim, 1))
        self.spatial = nn.Conv2d(2 * dim, 2, 3, padding=1)
        self.dim = dim

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([a, b], 1)
        cg = torch.sigmoid(self.channel(x.mean((2, 3), keepdim=True)))  # [B, 2C, 1, 1]
        sg = torch.sigmoid(self.spatial(x))  # [B, 2, H, W]
        ga, gb = cg[:, : self.dim] * sg[:, :1], cg[:, self.dim :] * sg[:, 1:]
        return a + ga * b, b + gb * a


class Attention(nn.Module):
    """Multi-head attention on feature maps, keys/values average-pooled by `pool` (static kernel).

    Queries come from `x`; keys/values from `ctx` (default: `x`). `ctx` may be wider than `x`
    (e.g. IR and VIS maps concatenated along W) — tokens are just flattened. Uses
    F.scaled_dot_product_attention (flash/mem-efficient kernels on GPU, exports to ONNX).
    """

    def __init__(self, dim: int, head_dim: int = 32, pool: int = 1):
        super().__init__()
        self.heads = max(1, dim // head_dim)
        self.pool = pool
        self.q = nn.Conv2d(dim, dim, 1)
        self.kv = nn.Conv2d(dim, 2 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if ctx is None else ctx
        if self.pool > 1:
            ctx = F.avg_pool2d(ctx, self.pool)
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, self.heads, d, -1).transpose(-1, -2)  # [B, h, N, d]
        k, v = self.kv(ctx).reshape(b, 2, self.heads, d, -1).transpose(-1, -2).unbind(1)  # [B, h, M, d]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class MixFFN(nn.Module):
    """Pointwise MLP with a depthwise 3x3 inside (SegFormer Mix-FFN): gives attention blocks position info."""

    def __init__(self, dim: int, ratio: float = 2.0):
        super().__init__()
        hidden = round(dim * ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dw(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block on [B,C,H,W] maps (BN as the norm: folds away, no layout change)."""

    def __init__(self, dim: int, head_dim: int = 32, pool: int = 1, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = Attention(dim, head_dim, pool)
        self.norm2 = nn.BatchNorm2d(dim)
        self.ffn = MixFFN(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class CAM(nn.Module):
    """Cross-modal attention module (paper: CAM): fuses the IR/VIS features of one stage.

    A 1x1 projection of both modalities gives the query map; with `attn` it then attends to the
    (pooled) tokens of *both* modalities (IR and VIS maps concatenated along W so one SDPA call sees
    2M keys). Without `attn` (cheap fine scales) a DWBlock refines the projection instead.
    """

    def __init__(self, dim: int, attn: bool, head_dim: int = 32, pool: int = 1, mlp_ratio: float = 2.0):
        super().__init__()
        self.proj = ConvBNAct(2 * dim, dim, 1, act="relu")
        self.use_attn = attn
        if attn:
            self.norm_q = nn.BatchNorm2d(dim)
            self.norm_kv = nn.BatchNorm2d(dim)
            self.attn = Attention(dim, head_dim, pool)
            self.norm2 = nn.BatchNorm2d(dim)
            self.ffn = MixFFN(dim, mlp_ratio)
        else:
            self.block = DWBlock(dim, mlp_ratio)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = self.proj(torch.cat([a, b], 1))
        if not self.use_attn:
            return self.block(x)
        ctx = self.norm_kv(torch.cat([a, b], 3))  # [B, C, H, 2W]: both modalities as one token set
        x = x + self.attn(self.norm_q(x), ctx)
        return x + self.ffn(self.norm2(x))


class AFM(nn.Module):
    """Adaptive fusion module (paper: AFM): learned per-pixel weights over IR and VIS features.

    A 2-way softmax equals a sigmoid of the logit difference, so one weight map and one `lerp`
    kernel do it: out = w * ir + (1 - w) * vis (much cheaper at full resolution than softmax + slices).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Conv2d(2 * dim, 1, 3, padding=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # conv(cat([a, b])) as two convs on weight halves: a full-resolution channel concat is a slow
        # interleaving copy in channels_last.
        c = a.shape[1]
        wa, wb = self.weight.weight[:, :c], self.weight.weight[:, c:]
        logit = F.conv2d(a, wa, self.weight.bias, padding=1) + F.conv2d(b, wb, None, padding=1)
        return torch.lerp(b, a, torch.sigmoid(logit))


class PHF(nn.Module):
    """Progressive heterogeneous fusion step (paper: PHF), SPADE-style.

    Deep semantic features `s` predict per-pixel scale (1 + gamma) and shift (beta) that modulate the
    parameter-free normalised shallow fusion features `x`. They are computed at the resolution of `s`
    and bilinearly upsampled, so the full-resolution cost is one interpolation each and one addcmul.
    """

    def __init__(self, dim: int, sem_dim: int, hidden: int = 32):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim, affine=False)
        self.shared = ConvBNAct(sem_dim, hidden, 3, act="relu")
        self.scale = nn.Conv2d(hidden, dim, 3, padding=1)  # 1 + gamma: init to identity modulation
        self.shift = nn.Conv2d(hidden, dim, 3, padding=1)  # beta
        self.init_identity()

    def init_identity(self) -> None:
        """Start as the identity modulation: stable early training."""
        for conv, bias in ((self.scale, 1.0), (self.shift, 0.0)):
            nn.init.zeros_(conv.weight)
            nn.init.constant_(conv.bias, bias)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.shared(s)
        scale, shift = self.scale(h), self.shift(h)
        if self.training:
            x = self.norm(x)
        else:  # eval BN is a per-channel affine: fold it into scale/shift at low resolution (saves a full-res pass)
            inv = torch.rsqrt(self.norm.running_var + self.norm.eps).reshape(1, -1, 1, 1)
            shift = shift - (self.norm.running_mean.reshape(1, -1, 1, 1) * inv) * scale
            scale = scale * inv
        size = x.shape[-2:]
        scale = F.interpolate(scale, size=size, mode="bilinear", align_corners=False)
        shift = F.interpolate(shift, size=size, mode="bilinear", align_corners=False)
        return torch.addcmul(shift, x, scale)


def upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def fuse_bn_(module: nn.Module) -> nn.Module:
    """Fold every ConvBNAct's BatchNorm into its conv in place (inference only)."""
    for m in module.modules():
        if isinstance(m, ConvBNAct):
            m.fuse()
    return module
