"""Camera-resolution outputs from a network run at the working resolution.

The network's cost follows its input size, so the engine runs it at about its training size (preprocess.
working_size) and brings the outputs back to the RGB camera's resolution here:
- the fused image is composed from the upsampled blend head (a smooth per-pixel thermal share and residual)
  and the full-resolution sources, so its detail is the cameras' own;
- the mask is the argmax of bilinearly upsampled logits, computed exactly but only where it can differ from
  the nearest class id (see upsampled_argmax);
- the confidence (max class probability) is computed at the working resolution and upsampled: it is a smooth
  map, and a full-resolution softmax over every class would cost more than the network's decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mafs_core.preprocess import resize


def to_bgr8(rgb: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] RGB float in [0,1] -> [B,H,W,3] uint8 BGR (a view; the engine's one host copy packs it)."""
    return (rgb.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8).flip(1).permute(0, 2, 3, 1)


def compose_fused_bgr8(head: torch.Tensor, ir: torch.Tensor, vis_bgr: torch.Tensor, residual: float) -> torch.Tensor:
    """The blend head at the working resolution + the sources at the camera's -> fused bgr8 [B,H,W,3].

    ir: [B,1,H,W] in [0,1], registered; vis_bgr: [B,H,W,3] uint8 BGR (preprocess.visible_to_bgr8). The same
    values as model.compose_fused_y then model.restore_color then to_bgr8 (within one rounding step): the
    luma change is computed once per pixel on [B,H,W] planes and added to the three uint8 channels in int16,
    so no float copy of the 3-channel frame is made (at 1080p each such pass costs milliseconds on a CPU).
    """
    size = tuple(vis_bgr.shape[1:3])
    # planar first: the network may hand over a channels-last head, and every per-pixel pass below would
    # then stride over interleaved memory (at 1080p: 35 ms instead of 17 on a CPU)
    h = resize(head.float().contiguous(), size)
    share = h[:, 0].sigmoid()
    b, g, r = vis_bgr.unbind(-1)  # BT.601 luma (kornia.color.rgb_to_y's weights) of a frame stored as bgr8
    vy = b.float().mul_(0.114 / 255.0).add_(g.float().mul_(0.587 / 255.0)).add_(r.float().mul_(0.299 / 255.0))
    # 255 * (clamp(y) - Y(vis)), where y = share * ir + (1 - share) * Y(vis) + residual * tanh(r)
    delta = (ir[:, 0] - vy).mul_(share).add_(h[:, 1].tanh_().mul_(residual)).add_(vy).clamp_(0.0, 1.0).sub_(vy)
    step = delta.mul_(255.0).round_().to(torch.int16)[..., None]
    return (vis_bgr.to(torch.int16) + step).clamp_(0, 255).to(torch.uint8)


def colorize(palette: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[C,3] uint8 palette, [B,H,W] uint8 ids -> [B,H,W,3]. index_select on int32 indices: indexing with
    ids.long() makes an 8-byte copy of every id first and is ~3x slower at 1080p on a CPU."""
    return palette.index_select(0, ids.reshape(-1).int()).reshape(*ids.shape, palette.shape[1])


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] -> [B,H,W] uint8 ids of the first maximum. A running comparison over C planes: on the CPU,
    torch.argmax over dim 1 of a contiguous NCHW tensor walks it with stride H*W and is ~4x slower."""
    best = x[:, 0].clone()
    ids = torch.zeros(best.shape, dtype=torch.uint8, device=x.device)
    for c in range(1, x.shape[1]):
        better = x[:, c] > best
        best = torch.maximum(best, x[:, c])
        ids.masked_fill_(better, c)
    return ids


def _source_index(n_out: int, n_in: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear source taps as F.interpolate(align_corners=False) computes them: (i0, i1, weight of i1)."""
    pos = ((torch.arange(n_out, device=device, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)
    i0 = pos.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, pos - i0


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """argmax over classes of the logits bilinearly upsampled to `size`, as uint8 [B,H,W].

    Exact and cheap: an output pixel is a convex combination of its four source pixels' logit vectors, so
    where those four share their argmax the result is that class (it is the largest in every term). Only
    pixels whose four sources disagree (class boundaries, a few % of the frame) get their logits
    interpolated. Written here because no library offers it; F.interpolate + argmax at 1080p costs ~5x more.
    """
    h, w = logits.shape[-2:]
    big_h, big_w = int(size[0]), int(size[1])
    if (h, w) == (big_h, big_w):
        return channel_argmax(logits)
    dev = logits.device
    ids = channel_argmax(logits)  # [B,h,w]
    y0, y1, wy = _source_index(big_h, h, dev)
    x0, x1, wx = _source_index(big_w, w, dev)
    # a 2x2 source block is uniform when its four ids agree (edges replicate, as the clamped taps do)
    nxt_y = torch.cat([ids[:, 1:], ids[:, -1:]], 1)
    nxt_x = torch.cat([ids[:, :, 1:], ids[:, :, -1:]], 2)
    nxt_xy = torch.cat([nxt_y[:, :, 1:], nxt_y[:, :, -1:]], 2)
    uniform = (ids == nxt_y) & (ids == nxt_x) & (ids == nxt_xy)
    out = ids.index_select(1, y0).index_select(2, x0)  # [B,H,W]: the class where the block is uniform
    edge = ~uniform.index_select(1, y0).index_select(2, x0)
    bi, yy, xx = edge.nonzero(as_tuple=True)
    if bi.numel():
        ya, yb, fy = y0[yy], y1[yy], wy[yy, None]
        xa, xb, fx = x0[xx], x1[xx], wx[xx, None]
        lg = logits.float().permute(0, 2, 3, 1)  # [B,h,w,C]: one gather per tap gives all classes
        top = lg[bi, ya, xa] * (1 - fx) + lg[bi, ya, xb] * fx
        bottom = lg[bi, yb, xa] * (1 - fx) + lg[bi, yb, xb] * fx
        out[bi, yy, xx] = (top * (1 - fy) + bottom * fy).argmax(1).to(torch.uint8)
    return out


def confidence(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Max class probability x 255 as uint8 [B,H,W], from the working-resolution logits, upsampled."""
    p = logits.float().softmax(1).amax(1, keepdim=True)
    if tuple(p.shape[-2:]) != tuple(size):
        p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
    return (p[:, 0] * 255.0).round_().clamp_(0, 255).to(torch.uint8)
