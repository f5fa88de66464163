"""Class-bias calibration: the fit recovers a known under-prediction, stays on its grid, and folding the
offsets into the head shifts the network's logits by exactly those offsets."""

from __future__ import annotations

import torch

from mafs_core.calibrate import GRID, apply_class_bias, fit_class_bias, miou
from mafs_core.model import build_model


def _biased_logits(n: int = 20000, shift: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes (80/15/5 %) with clean one-hot logits, then class 2 pushed down by `shift`: its pixels
    now lose against class 0 whenever the noise is against them."""
    g = torch.Generator().manual_seed(0)
    labels = torch.multinomial(torch.tensor([0.8, 0.15, 0.05]), n, replacement=True, generator=g)
    logits = 2.0 * torch.nn.functional.one_hot(labels, 3).T.float() + torch.randn(3, n, generator=g)
    logits[2] -= shift
    return logits, labels


def test_fit_compensates_a_known_shift_and_is_bounded() -> None:
    shifted, labels = _biased_logits(shift=1.5)
    clean, _ = _biased_logits(shift=0.0)
    a, b = fit_class_bias(shifted, labels), fit_class_bias(clean, labels)
    # the mIoU-optimal offsets of the shifted logits are those of the clean ones plus the shift on class 2
    assert a.bias[0] == b.bias[0] == 0.0 and a.pixels == labels.numel()
    assert abs((a.bias[2] - b.bias[2]) - 1.5) <= 0.25 and abs(a.bias[1] - b.bias[1]) <= 0.25
    assert abs(a.miou_after - b.miou_after) < 0.01
    assert a.miou_after > a.miou_before + 0.05
    assert abs(a.miou_before - miou(shifted, labels, torch.zeros(3), 3)) < 1e-9
    assert all(min(GRID) <= v <= max(GRID) for v in a.bias + b.bias)
    pred_before = shifted.argmax(0)
    pred_after = (shifted + torch.tensor(a.bias)[:, None]).argmax(0)
    assert (pred_after == 2).sum() > (pred_before == 2).sum()  # the rare class is predicted more often


def test_ignored_pixels_do_not_count() -> None:
    logits, labels = _biased_logits()
    ignored = labels.clone()
    ignored[labels == 2] = 255
    fit = fit_class_bias(logits, ignored)
    assert fit.bias[2] <= 0.0  # no class-2 evidence left: nothing to gain from predicting it
    try:
        fit_class_bias(logits, torch.full_like(labels, 255))
    except ValueError as exc:
        assert "labelled" in str(exc)
    else:
        raise AssertionError("all-ignored labels must be refused")


def test_apply_shifts_the_network_logits_exactly() -> None:
    torch.manual_seed(0)
    model = build_model("mafs_t").eval()
    ir, vis = torch.rand(1, 1, 64, 96), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        before = model(ir, vis)["logits"]
        bias = [0.0, -0.5, 1.75, 0.0, 0.25, 0.0, 0.0, 3.0, -2.0]
        apply_class_bias(model, bias)
        after = model(ir, vis)["logits"]
    torch.testing.assert_close(after - before, torch.tensor(bias).view(1, -1, 1, 1).expand_as(before),
                               atol=1e-5, rtol=0)


def test_coordinate_ascent_matches_brute_force_argmax() -> None:
    """The fast per-class update equals re-running argmax over all classes for every trial offset."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (3000,), generator=g)
    logits = torch.randn(4, 3000, generator=g) + torch.nn.functional.one_hot(labels, 4).T * 1.5
    logits[3] -= 1.0
    grid = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
    bias, best = torch.zeros(4), miou(logits, labels, torch.zeros(4), 4)
    for _ in range(3):  # the plain algorithm
        for c in range(1, 4):
            for v in grid:
                trial = bias.clone()
                trial[c] = v
                if (score := miou(logits, labels, trial, 4)) > best + 1e-6:
                    best, bias = score, trial
    fit = fit_class_bias(logits, labels, grid=grid)
    assert fit.bias == [round(float(b), 4) for b in bias] and abs(fit.miou_after - best) < 1e-12


def test_weight_average_removes_each_ones_offsets_first(tmp_path) -> None:
    """scripts/recalibrate.py --average: offsets folded at export come out before the mean, BN counters stay."""
    import importlib.util
    from pathlib import Path

    from mafs_core.checkpoint import save_checkpoint

    spec = importlib.util.spec_from_file_location(
        "recalibrate", Path(__file__).resolve().parents[1] / "scripts" / "recalibrate.py")
    recal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recal)
    nets, heads = [], []
    for seed, bias in ((0, [0.0, -1.0, -2.0] + [0.5] * 6), (1, [0.0] + [-0.25] * 8)):
        torch.manual_seed(seed)
        net = build_model("mafs_t", num_classes=9).eval()
        heads.append(net.seg.head.bias.detach().clone())  # before calibration
        apply_class_bias(net, bias)
        path = tmp_path / f"{seed}.safetensors"
        save_checkpoint(path, net, {"training": {"class_bias": {"bias": bias}}})
        back, _ = recal.without_class_bias(str(path))
        assert torch.allclose(back.seg.head.bias, heads[-1], atol=1e-6)
        nets.append(back)
    a, b = nets
    w_b = b.seg.head.weight.detach().clone()
    a.enc_ir.sfe.full.bn.num_batches_tracked.fill_(7)
    b.enc_ir.sfe.full.bn.num_batches_tracked.fill_(100)
    counters = {k: v.clone() for k, v in a.state_dict().items() if not v.is_floating_point()}
    w_a = a.seg.head.weight.detach().clone()
    recal.average_into(a, [b])
    assert torch.allclose(a.seg.head.weight, (w_a + w_b) / 2, atol=1e-7)
    assert torch.allclose(a.seg.head.bias, (heads[0] + heads[1]) / 2, atol=1e-6)
    assert counters and all(torch.equal(a.state_dict()[k], v) for k, v in counters.items())
    assert a.enc_ir.sfe.full.bn.num_batches_tracked.item() == 7
