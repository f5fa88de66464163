"""Losses for both training stages. Images are float in [0,1]; VIS is RGB; fused outputs are luminance (Y).

Stage I  : `mae_loss` (L1 + Sobel-gradient L1 on both reconstructed modalities).
Stage II : `fusion_loss` (salience-weighted intensity toward max(IR, Y), gradient toward the stronger source
           edge, SSIM to both sources, optional `qabf_loss`), `ohem_ce` (segmentation), `channel_kd` or `pixel_kd`
           (teacher distillation), `pseudo_labels` (teacher argmax where labels are missing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import kornia
import torch
import torch.nn.functional as F

from mafs_core.metrics import QABF_SIGMOID

IGNORE_INDEX = 255


def rgb_to_y(vis: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] RGB -> [B,1,H,W] BT.601 luminance (the channel the network fuses)."""
    return kornia.color.rgb_to_ycbcr(vis)[:, :1]


def grad_mag(x: torch.Tensor) -> torch.Tensor:
    """|d/dx| + |d/dy| of a Sobel filter (kornia), same shape as x."""
    g = kornia.filters.spatial_gradient(x, mode="sobel", order=1, normalized=True)  # [B,C,2,H,W]
    return g.abs().sum(2)


def rec_loss(rec: torch.Tensor, target: torch.Tensor, grad_weight: float = 1.0) -> torch.Tensor:
    """Stage I reconstruction of one full modality: L1 + grad_weight * L1 of Sobel gradient magnitudes."""
    return F.l1_loss(rec, target) + grad_weight * F.l1_loss(grad_mag(rec), grad_mag(target))


def mae_loss(rec_ir: torch.Tensor, rec_vis: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor,
             grad_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Unweighted sum of both modalities' reconstruction losses (training weights them per task)."""
    l_ir, l_vis = rec_loss(rec_ir, ir, grad_weight), rec_loss(rec_vis, vis, grad_weight)
    return l_ir + l_vis, {"rec_ir": float(l_ir.detach()), "rec_vis": float(l_vis.detach())}


def ir_saliency(ir: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Frequency-tuned saliency of the thermal image (|blur(IR) - mean(IR)|, scaled per image to [0,1]):
    warm targets (people, engines) stand out from the background in IR."""
    k = 2 * math.ceil(3 * sigma) + 1
    blur = kornia.filters.gaussian_blur2d(ir, (k, k), (sigma, sigma))
    s = (blur - ir.mean((2, 3), keepdim=True)).abs()
    return s / s.amax((2, 3), keepdim=True).clamp_min(1e-6)


def fusion_loss(fused_y: torch.Tensor, ir: torch.Tensor, vis_y: torch.Tensor, target_mask: torch.Tensor | None = None,
                w_int: float = 1.0, w_grad: float = 1.0, w_ssim: float = 1.0, salient_weight: float = 1.0,
                w_qabf: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Unsupervised fusion objective.

    intensity: L1 to max(IR, VIS-Y), weighted by 1 + salient_weight * S, S = max(IR saliency, target_mask)
               (target_mask in [0,1], e.g. the teacher's person+car probability) so warm targets keep IR contrast;
    gradient : L1 between |grad F| and max(|grad IR|, |grad Y|) (keep the sharper texture of either source);
    ssim     : mean of kornia SSIM losses against IR and against VIS-Y (structure of both);
    qabf     : 1 - Q^{AB/F} (edge strength and orientation of the stronger source), when w_qabf > 0.
    """
    sal = ir_saliency(ir)
    if target_mask is not None:
        sal = torch.maximum(sal, target_mask.to(sal.dtype))
    weight = 1.0 + salient_weight * sal.detach()
    l_int = (weight * (fused_y - torch.maximum(ir, vis_y)).abs()).mean() / weight.mean()
    l_grad = F.l1_loss(grad_mag(fused_y), torch.maximum(grad_mag(ir), grad_mag(vis_y)))
    l_ssim = 0.5 * (kornia.losses.ssim_loss(fused_y, ir, 11) + kornia.losses.ssim_loss(fused_y, vis_y, 11))
    total = w_int * l_int + w_grad * l_grad + w_ssim * l_ssim
    parts = {"f_int": float(l_int.detach()), "f_grad": float(l_grad.detach()), "f_ssim": float(l_ssim.detach())}
    if w_qabf > 0:
        l_qabf = qabf_loss(fused_y, ir, vis_y)
        total = total + w_qabf * l_qabf
        parts["f_qabf"] = float(l_qabf.detach())
    return total, parts


def _sobel_strength_orientation(x: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel magnitude and atan(sy/sx) in (-pi/2, pi/2], zero padded (the Qabf reference's conventions)."""
    k = kornia.filters.get_spatial_gradient_kernel2d("sobel", 1).to(x)  # [2,3,3]: d/dx, d/dy
    sx = kornia.filters.filter2d(x, k[0][None], border_type="constant")
    sy = kornia.filters.filter2d(x, k[1][None], border_type="constant")
    g = (sx * sx + sy * sy + eps).sqrt()
    s = torch.where(sx >= 0, 1.0, -1.0)  # atan(sy/sx) = atan2(s*sy, s*sx); sx = 0 gives +-pi/2, not a NaN
    return g, torch.atan2(s * sy, s * sx + eps)


def qabf_loss(fused_y: torch.Tensor, ir: torch.Tensor, vis_y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - Q^{AB/F} (Xydeas & Petrovic 2000), differentiable in the fused image.

    Why: the gradient loss matches edge *magnitude* only, while Q^{AB/F} also scores edge *orientation* and
    weighs each pixel by the stronger source edge; pixel-max fusion beat our weights on it. The same sigmoid
    constants as `metrics.qabf`; the strength ratio is min/max (the reference's quirk at exact equality is
    dropped). No library ships a differentiable Q^{AB/F}, hence this one.
    """
    tg, kg, dg, ta, ka, da = QABF_SIGMOID
    gf, af = _sobel_strength_orientation(fused_y)
    num = den = 0.0
    for src in (ir, vis_y):
        with torch.no_grad():
            gs, as_ = _sobel_strength_orientation(src)
        ratio = torch.minimum(gs, gf) / (torch.maximum(gs, gf) + eps)
        orient = 1 - (as_ - af).abs() / (math.pi / 2)
        q = tg * torch.sigmoid(-kg * (ratio - dg)) * ta * torch.sigmoid(-ka * (orient - da))
        num, den = num + (q * gs).sum((1, 2, 3)), den + gs.sum((1, 2, 3))
    return (1 - num / den.clamp_min(eps)).mean()


def ohem_ce(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 10000,
            ignore_index: int = IGNORE_INDEX, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Online hard example mining cross-entropy: mean CE over pixels whose true-class probability is below
    `thresh`, but at least the `min_kept` hardest valid pixels. Zero (with grad) if no pixel is labelled.

    `weight` [C] scales each kept pixel's CE by its true class's weight, normalised by the kept weights (as
    torch's weighted CE is): hard pixels are chosen by their unweighted CE, so the weights change what the
    kept pixels count for, not which are kept."""
    pix = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none").flatten()
    tgt = target.flatten()
    valid = tgt != ignore_index
    pix, tgt = pix[valid], tgt[valid]
    n = pix.numel()
    if n == 0:
        return logits.sum() * 0.0
    hard = pix > -math.log(thresh)
    n_keep = min(n, max(min_kept, int(hard.sum())))
    kept, idx = pix.topk(n_keep, sorted=False)
    if weight is None:
        return kept.mean()
    w = weight.to(kept.device, kept.dtype)[tgt[idx]]
    return (kept * w).sum() / w.sum().clamp_min(1e-12)


def class_weights(pixel_counts: Sequence[float], scheme: str, max_ratio: float = 10.0) -> torch.Tensor:
    """Per-class CE weights from the training labels' pixel counts.

    `sqrt_inv`: w_c proportional to 1/sqrt(f_c), capped at `max_ratio` x the smallest weight, then scaled so
    that the pixel-weighted mean is 1 (the loss keeps its scale). Square root and cap because plain inverse
    frequency (x900 for guardrail against background on MSRS) turns every thin class into false positives;
    the class-bias calibration before export then sets the final decision thresholds (docs/training.md).
    Classes absent from the labels get the largest weight; with no labelled pixel at all (teacher-only or
    box-only training) every weight is 1. `none`: all ones.
    """
    c = torch.as_tensor(pixel_counts, dtype=torch.float64)
    if scheme not in ("none", "sqrt_inv"):
        raise ValueError(f"class weighting must be 'none' or 'sqrt_inv', got {scheme!r}")
    if scheme == "none" or c.sum() <= 0:
        return torch.ones(len(c), dtype=torch.float32)
    f = c / c.sum().clamp_min(1)
    w = torch.where(f > 0, f.clamp_min(1e-12).rsqrt(), torch.tensor(float("inf"), dtype=torch.float64))
    w = torch.minimum(w, w.min() * max_ratio)
    w = w / (w * f).sum().clamp_min(1e-12)
    return w.float()


def _kd_pair(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The student's logits at the teacher's size (KD compares them pixel for pixel); same classes required."""
    if student.shape != teacher.shape:
        if student.shape[:2] != teacher.shape[:2]:
            raise ValueError(f"KD needs the same classes: student {tuple(student.shape)}, "
                             f"teacher {tuple(teacher.shape)}")
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return student


def channel_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021): each class map becomes a spatial distribution
    softmax(logits / tau) over H*W; KL(teacher || student) per channel, times tau^2, averaged over B*C."""
    student = _kd_pair(student, teacher)
    b, c = student.shape[:2]
    s = F.log_softmax(student.float().reshape(b * c, -1) / tau, dim=1)
    t = F.log_softmax(teacher.float().reshape(b * c, -1) / tau, dim=1)
    return (tau**2) * F.kl_div(s, t, log_target=True, reduction="sum") / (b * c)


def pixel_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Pixel-wise distillation (Hinton et al., 2015): KL(teacher || student) between the class distributions
    softmax(logits / tau) at each pixel, times tau^2, averaged over B*H*W. Why beside `channel_kd`: a teacher
    that averages views (TTA) differs from its plain pass in each pixel's class balance, which this matches
    and the per-class spatial distributions of `channel_kd` do not."""
    student = _kd_pair(student, teacher)
    s = F.log_softmax(student.float() / tau, dim=1)
    t = F.log_softmax(teacher.float() / tau, dim=1)
    b, _, h, w = student.shape
    return (tau**2) * F.kl_div(s, t, log_target=True, reduction="sum") / (b * h * w)


def check_kd_kind(kind: str) -> str:
    """`loss.kd_kind`, checked when the trainer starts rather than at its first step."""
    if kind not in KD_KINDS:
        raise ValueError(f"loss.kd_kind must be one of {sorted(KD_KINDS)}, got {kind!r}")
    return kind


def kd_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """The distillation term named by `loss.kd_kind`: "channel" (`channel_kd`) or "pixel" (`pixel_kd`)."""
    return KD_KINDS[check_kd_kind(kind)](student, teacher, tau)


KD_KINDS = {"channel": channel_kd, "pixel": pixel_kd}


def pseudo_labels(teacher_logits: torch.Tensor, conf_thresh: float = 0.0,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Teacher argmax as labels; pixels with max probability below `conf_thresh` become `ignore_index`."""
    prob = teacher_logits.float().softmax(1)
    conf, lab = prob.max(1)
    if conf_thresh > 0:
        lab = lab.masked_fill(conf < conf_thresh, ignore_index)
    return lab


def merge_labels(label: torch.Tensor, has_label: torch.Tensor, pseudo: torch.Tensor | None) -> torch.Tensor:
    """Ground truth where an image has labels, teacher pseudo-labels where it has none."""
    if pseudo is None:
        return label
    return torch.where(has_label.view(-1, 1, 1).to(label.device), label, pseudo)
