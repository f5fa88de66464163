"""Box-supervised segmentation losses: train the segmentation head from detection boxes (docs/training.md,
"Box supervision").

Three terms on logits [B, C, H, W] and per-image boxes of the box classes (e.g. person, bike, car):

* projection (BoxInst, Tian et al. CVPR 2021): per box, the max-projections of the class probability onto the
  x and y axes match those of the box (dice), inside a crop around the box, so two boxes never merge;
* pairwise (BoxInst): inside a box of c, neighbouring pixels of similar colour and heat take the same label;
* negative: outside every box of a box class c the class is absent (boxes label all objects of their classes).

``BoxTargets.from_boxes`` turns lists of ``mafs_core.boxes.Box`` into tensors; ``box_loss`` weights the terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import kornia.color
import torch

from mafs_core.boxes import Box

EPS = 1e-6
DEFAULT_WEIGHTS = {"proj": 1.0, "pair": 1.0, "neg": 1.0}
# The four neighbour offsets of a 3x3 neighbourhood (the other four are the same pairs seen from the other end).
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


@dataclass
class BoxTargets:
    """Boxes of a batch as tensors.

    boxes: [N, 6] long (image index, class, x0, y0, x1, y1; pixel bounds, exclusive ends);
    mask: [B, C, H, W] float, 1 inside some box of class c; classes: the box classes (labelled exhaustively);
    valid: [B] bool, images that have box labels at all (the others add nothing to any term).
    """
    boxes: torch.Tensor
    mask: torch.Tensor
    classes: list[int]
    valid: torch.Tensor

    @classmethod
    def from_boxes(cls, boxes: Sequence[Sequence[Box] | None], num_classes: int, shape: tuple[int, int],
                   classes: Sequence[int], device: str | torch.device = "cpu") -> BoxTargets:
        """From per-image box lists (None = image without box labels) at the logits' resolution `shape`."""
        h, w = shape
        rows = [(i, b.cls, *b.pixel_bounds(h, w)) for i, bs in enumerate(boxes) for b in (bs or ())]
        t = torch.tensor(rows, dtype=torch.long, device=device).reshape(-1, 6)
        mask = torch.zeros(len(boxes), num_classes, h, w, device=device)
        for i, c, x0, y0, x1, y1 in rows:
            mask[i, c, y0:y1, x0:x1] = 1.0
        valid = torch.tensor([bs is not None for bs in boxes], dtype=torch.bool, device=device)
        return cls(t, mask, list(classes), valid)


def dice_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - 2 sum(xy) / (sum(x^2) + sum(y^2)) over the last dim (BoxInst's form)."""
    return 1.0 - 2.0 * (x * y).sum(-1) / ((x * x).sum(-1) + (y * y).sum(-1)).clamp_min(EPS)


def projection_loss(probs: torch.Tensor, targets: BoxTargets, margin: float = 0.25) -> torch.Tensor:
    """Mean over boxes of dice(x-projection) + dice(y-projection) in a crop of the box grown by `margin`
    (fraction of its size, at least 2 px).

    Within the crop the target is this box alone, and pixels inside other boxes of the same class are left
    out of the prediction: the gap between two boxes must stay empty (a mask spanning both costs), while a
    neighbour's own pixels do not count against this box.
    """
    if len(targets.boxes) == 0:
        return probs.sum() * 0.0
    _, _, h, w = probs.shape
    losses = []
    for b, c, x0, y0, x1, y1 in targets.boxes.tolist():
        mx, my = max(2, round(margin * (x1 - x0))), max(2, round(margin * (y1 - y0)))
        cx0, cy0, cx1, cy1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
        own = torch.zeros(cy1 - cy0, cx1 - cx0, device=probs.device)
        own[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = 1.0
        others = (targets.mask[b, c, cy0:cy1, cx0:cx1] - own).clamp_min(0.0)  # other boxes of c in the crop
        p = probs[b, c, cy0:cy1, cx0:cx1] * (1.0 - others)
        losses.append(dice_loss(p.amax(0), own.amax(0)) + dice_loss(p.amax(1), own.amax(1)))
    return torch.stack(losses).mean()


def image_similarity(images: torch.Tensor, dilation: int = 2, theta: float = 2.0) -> torch.Tensor:
    """[B, 4, H, W] similarity exp(-||f_i - f_j|| / theta) of each pixel to its neighbour at the four offsets
    (times `dilation`); f = CIE LAB of the RGB channels plus the thermal channel scaled to L's 0..100
    (images: RGB [+ thermal] in [0, 1]). Invalid (off-image) neighbours get 0."""
    rgb = images[:, :3]
    feats = kornia.color.rgb_to_lab(rgb.clamp(0.0, 1.0))
    if images.shape[1] > 3:
        feats = torch.cat([feats, images[:, 3:4] * 100.0], 1)
    sims = [_pairs(feats, dy * dilation, dx * dilation, lambda a, b: torch.exp(-(a - b).norm(dim=1) / theta))
            for dy, dx in _OFFSETS]
    return torch.stack(sims, 1)


def _pairs(t: torch.Tensor, dy: int, dx: int, fn) -> torch.Tensor:
    """fn(t at p, t at p + (dy, dx)) for each pixel p whose neighbour is in the image, zero elsewhere."""
    h, w = t.shape[-2:]
    ys, xs = slice(0, max(0, h - dy)), slice(max(0, -dx), max(0, w - max(dx, 0)))
    yn, xn = slice(dy, h), slice(max(0, dx), max(0, w + min(dx, 0)))
    v = fn(t[..., ys, xs], t[..., yn, xn])
    out = v.new_zeros((*v.shape[:-2], h, w))
    out[..., ys, xs] = v
    return out


def pairwise_loss(probs: torch.Tensor, targets: BoxTargets, similarity: torch.Tensor, dilation: int = 2,
                  tau: float = 0.3) -> torch.Tensor:
    """Mean of -log(p_i p_j + (1 - p_i)(1 - p_j)) over neighbour pairs inside a box of c (both ends) with
    similarity >= tau, for each box class c; p = probability of c."""
    total = probs.new_zeros(())
    count = probs.new_zeros(())
    for c in targets.classes:
        p = probs[:, c].clamp(EPS, 1.0 - EPS)
        inside = targets.mask[:, c]
        for k, (dy, dx) in enumerate(_OFFSETS):
            same = _pairs(p, dy * dilation, dx * dilation, lambda a, b: a * b + (1 - a) * (1 - b))
            both = _pairs(inside, dy * dilation, dx * dilation, lambda a, b: a * b)
            weight = both * (similarity[:, k] >= tau).float() * targets.valid[:, None, None].float()
            total = total - (torch.log(same.clamp_min(EPS)) * weight).sum()
            count = count + weight.sum()
    return total / count.clamp_min(1.0)


def negative_loss(probs: torch.Tensor, targets: BoxTargets) -> torch.Tensor:
    """Mean of -log(1 - p_c) over pixels outside every box of c, for the box classes c of labelled images."""
    total = probs.new_zeros(())
    count = probs.new_zeros(())
    valid = targets.valid[:, None, None].float()
    for c in targets.classes:
        outside = (1.0 - targets.mask[:, c]) * valid
        total = total - (torch.log1p(-probs[:, c].clamp(0.0, 1.0 - EPS)) * outside).sum()
        count = count + outside.sum()
    return total / count.clamp_min(1.0)


def box_loss(logits: torch.Tensor, targets: BoxTargets, images: torch.Tensor | None = None,
             weights: Mapping[str, float] | None = None, similarity: torch.Tensor | None = None,
             dilation: int = 2, tau: float = 0.3, theta: float = 2.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the box terms -> (total, {"proj", "pair", "neg"}); probabilities are the softmax.

    images: [B, 3 or 4, H, W] RGB (+ thermal) in [0, 1] for the pairwise term's similarity (or pass
    `similarity` precomputed); a term with weight 0 is not computed.
    """
    if logits.shape[0] != targets.mask.shape[0] or logits.shape[2:] != targets.mask.shape[2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and box targets {tuple(targets.mask.shape)} differ in batch "
                         "or size: build the targets at the logits' resolution (Box.scaled)")
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    probs = logits.float().softmax(1)
    parts: dict[str, torch.Tensor] = {}
    if w["proj"]:
        parts["proj"] = projection_loss(probs, targets)
    if w["pair"]:
        if similarity is None:
            if images is None:
                raise ValueError("the pairwise term needs the images (or a precomputed similarity)")
            similarity = image_similarity(images, dilation, theta)
        parts["pair"] = pairwise_loss(probs, targets, similarity, dilation, tau)
    if w["neg"]:
        parts["neg"] = negative_loss(probs, targets)
    total = sum((w[k] * v for k, v in parts.items()), logits.new_zeros(()).float())
    return total, parts
