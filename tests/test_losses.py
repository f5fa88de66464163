"""Losses: known values on simple inputs and gradients that flow."""

from __future__ import annotations

import math

import pytest
import torch

from mafs_core.losses import (
    channel_kd,
    fusion_loss,
    grad_mag,
    kd_loss,
    mae_loss,
    merge_labels,
    ohem_ce,
    pixel_kd,
    pseudo_labels,
    qabf_loss,
    rgb_to_y,
)


def test_rgb_to_y_and_grad() -> None:
    g = torch.rand(1, 1, 8, 8)
    assert torch.allclose(rgb_to_y(g.expand(1, 3, 8, 8)), g, atol=1e-6)
    assert grad_mag(torch.full((1, 1, 8, 8), 0.3)).abs().max() == 0
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    gm = grad_mag(step)
    assert gm[0, 0, 4, 3] > 0 and gm[0, 0, 4, 0] == 0


def test_mae_loss_known_values() -> None:
    ir, vis = torch.rand(2, 1, 16, 16), torch.rand(2, 3, 16, 16)
    total, parts = mae_loss(ir, vis, ir, vis)
    assert total.item() == 0.0
    total, parts = mae_loss(ir + 0.1, vis - 0.2, ir, vis)  # constant offsets: L1 only, gradients identical
    assert total.item() == pytest.approx(0.3, abs=1e-5)
    assert parts["rec_ir"] == pytest.approx(0.1, abs=1e-5) and parts["rec_vis"] == pytest.approx(0.2, abs=1e-5)


def test_fusion_loss_known_values() -> None:
    ir = torch.full((1, 1, 32, 32), 0.2)
    vis_y = torch.full((1, 1, 32, 32), 0.6)
    total, p = fusion_loss(torch.full((1, 1, 32, 32), 0.5), ir, vis_y)
    assert p["f_int"] == pytest.approx(0.1, abs=1e-5)  # |0.5 - max(0.2, 0.6)|, flat saliency
    assert p["f_grad"] == pytest.approx(0.0, abs=1e-6)
    same = torch.rand(1, 1, 32, 32)
    total, p = fusion_loss(same, same, same)
    assert total.item() == pytest.approx(0.0, abs=1e-5)
    # salient (hot) IR target: errors there cost more than the same error on the background
    ir = torch.zeros(1, 1, 32, 32)
    ir[..., 12:20, 12:20] = 1.0
    vis_y = torch.zeros_like(ir)
    target = torch.maximum(ir, vis_y)
    err_bg, err_fg = target.clone(), target.clone()
    err_bg[..., 0:8, 0:8] += 0.5
    err_fg[..., 12:20, 12:20] -= 0.5
    assert fusion_loss(err_fg, ir, vis_y)[1]["f_int"] > 1.5 * fusion_loss(err_bg, ir, vis_y)[1]["f_int"]
    # gradient term wants the stronger edge of either source
    edge = torch.zeros(1, 1, 32, 32)
    edge[..., 16:] = 1.0
    assert fusion_loss(edge, edge, torch.zeros_like(edge), w_ssim=0)[1]["f_grad"] == pytest.approx(0.0, abs=1e-6)
    assert fusion_loss(torch.zeros_like(edge), edge, torch.zeros_like(edge))[1]["f_grad"] > 0.01


def test_ohem_ce_known_values() -> None:
    c = 9
    logits = torch.zeros(2, c, 8, 8)
    target = torch.randint(0, c, (2, 8, 8))
    assert ohem_ce(logits, target, min_kept=1).item() == pytest.approx(math.log(c), abs=1e-5)
    # half the pixels easy (p ~ 1): above min_kept, OHEM averages only the hard half
    easy = torch.zeros(1, 2, 4, 4)
    easy[:, 0, :2] = 20.0
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    assert ohem_ce(easy, t, thresh=0.7, min_kept=1).item() == pytest.approx(math.log(2), abs=1e-5)
    # min_kept forces the easiest pixels in too: plain mean over all 16
    assert ohem_ce(easy, t, thresh=0.7, min_kept=16).item() == pytest.approx(math.log(2) / 2, abs=1e-4)
    t_ign = t.clone()
    t_ign[:, 2:] = 255  # ignore the hard pixels: only easy ones remain
    assert ohem_ce(easy, t_ign, min_kept=1).item() < 1e-6
    x = torch.zeros(1, 3, 4, 4, requires_grad=True)
    loss = ohem_ce(x, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and x.grad is not None


def test_channel_kd_known_value() -> None:
    t = torch.zeros(1, 1, 1, 2)  # spatial distribution [.5, .5]
    s = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)  # [.25, .75]
    assert channel_kd(s, t, tau=1.0).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert channel_kd(s * 2, t, tau=2.0).item() == pytest.approx(4 * 0.5 * math.log(4 / 3), abs=1e-6)
    x = torch.randn(2, 9, 8, 8)
    assert channel_kd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert channel_kd(torch.randn(2, 9, 4, 4), x).item() > 0  # student upsampled to the teacher's size
    with pytest.raises(ValueError, match="same classes"):
        channel_kd(torch.randn(2, 5, 8, 8), x)


def test_pixel_kd_known_value_and_kind() -> None:
    # classes on dim 1: teacher [.5, .5] and student [.25, .75] at one pixel; a second pixel agrees exactly
    t = torch.zeros(1, 2, 1, 2)
    s = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]).view(1, 2, 1, 2)
    assert pixel_kd(s, t, tau=1.0).item() == pytest.approx(0.5 * 0.5 * math.log(4 / 3), abs=1e-6)
    assert pixel_kd(s * 2, t, tau=2.0).item() == pytest.approx(4 * 0.5 * 0.5 * math.log(4 / 3), abs=1e-6)
    x = torch.randn(2, 9, 8, 8)
    y = torch.randn(2, 9, 8, 8)
    # the same pair read per class channel (spatial distributions) gives channel_kd's different value
    assert channel_kd(y, x, tau=1.0).item() != pytest.approx(pixel_kd(y, x, tau=1.0).item(), abs=1e-3)
    assert pixel_kd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert pixel_kd(torch.randn(2, 9, 4, 4), x).item() > 0  # student upsampled to the teacher's size
    assert kd_loss("pixel", s, t, 1.0).item() == pytest.approx(pixel_kd(s, t, 1.0).item())
    assert kd_loss("channel", s, t, 1.0).item() == pytest.approx(channel_kd(s, t, 1.0).item())
    with pytest.raises(ValueError, match="kd_kind"):
        kd_loss("spatial", s, t, 1.0)
    student = torch.randn(1, 9, 4, 4, requires_grad=True)
    pixel_kd(student, x[:1]).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_pseudo_labels_and_merge() -> None:
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 1, 0, 0] = 5.0  # confident class 1
    logits[:, 2, 1, 1] = 0.5  # unsure class 2
    lab = pseudo_labels(logits, conf_thresh=0.6)
    assert lab[0, 0, 0] == 1 and lab[0, 1, 1] == 255
    assert pseudo_labels(logits)[0, 1, 1] == 2
    gt = torch.zeros(2, 2, 2, dtype=torch.long)
    merged = merge_labels(gt, torch.tensor([True, False]), lab)
    assert torch.equal(merged[0], gt[0]) and torch.equal(merged[1], lab[1])


def test_gradients_flow() -> None:
    torch.manual_seed(0)
    ir, vis = torch.rand(2, 1, 32, 32), torch.rand(2, 3, 32, 32)
    fused = torch.rand(2, 1, 32, 32, requires_grad=True)
    rec_ir, rec_vis = torch.rand(2, 1, 32, 32, requires_grad=True), torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = torch.randn(2, 9, 32, 32, requires_grad=True)
    teacher = torch.randn(2, 9, 32, 32)
    label = torch.randint(0, 9, (2, 32, 32))
    tmask = torch.rand(2, 1, 32, 32)
    total = (fusion_loss(fused, ir, rgb_to_y(vis), tmask)[0] + mae_loss(rec_ir, rec_vis, ir, vis)[0]
             + ohem_ce(logits, label, min_kept=100) + channel_kd(logits, teacher))
    total.backward()
    for t in (fused, rec_ir, rec_vis, logits):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_qabf_loss_matches_the_metric_and_its_gradient_raises_qabf(sample_data) -> None:
    import cv2
    import numpy as np

    from mafs_core.metrics import qabf

    name = sorted((sample_data / "msrs" / "ir").iterdir())[0].name
    ir = cv2.imread(str(sample_data / "msrs" / "ir" / name), cv2.IMREAD_GRAYSCALE)
    vis = cv2.cvtColor(cv2.imread(str(sample_data / "msrs" / "vi" / name)), cv2.COLOR_BGR2YCrCb)[..., 0]
    t = lambda a: torch.from_numpy(a.astype(np.float32) / 255)[None, None]  # noqa: E731
    for fused in (np.maximum(ir, vis), ((ir.astype(np.int32) + vis) // 2).astype(np.uint8)):
        assert 1 - float(qabf_loss(t(fused), t(ir), t(vis))) == pytest.approx(qabf(ir, vis, fused), abs=3e-3)
    # a few gradient steps from mean fusion raise the real (uint8) metric
    f = t(((ir.astype(np.int32) + vis) // 2).astype(np.uint8)).requires_grad_(True)
    opt = torch.optim.Adam([f], lr=5e-3)
    for _ in range(20):
        opt.zero_grad()
        qabf_loss(f, t(ir), t(vis)).backward()
        opt.step()
    after = (f.detach().clamp(0, 1)[0, 0].numpy() * 255).round().astype(np.uint8)
    assert qabf(ir, vis, after) > qabf(ir, vis, ((ir.astype(np.int32) + vis) // 2).astype(np.uint8)) + 0.05


def test_fusion_loss_adds_the_qabf_term_only_when_weighted() -> None:
    g = torch.Generator().manual_seed(0)
    ir, vis_y, f = (torch.rand(2, 1, 32, 32, generator=g) for _ in range(3))
    base, parts = fusion_loss(f, ir, vis_y)
    assert "f_qabf" not in parts
    total, parts = fusion_loss(f, ir, vis_y, w_qabf=2.0)
    assert float(total - base) == pytest.approx(2.0 * parts["f_qabf"], rel=1e-5) and 0 < parts["f_qabf"] < 1
