"""Box-supervised losses: values by hand on toy masks, gradients, and that two boxes do not merge."""

from __future__ import annotations

import math

import pytest
import torch

from mafs_core.box_losses import (
    BoxTargets,
    box_loss,
    dice_loss,
    image_similarity,
    negative_loss,
    pairwise_loss,
    projection_loss,
)
from mafs_core.boxes import Box

C, K = 3, 1  # toy model: 3 classes, box class 1
BIG = 30.0


def _logits(cls_map: torch.Tensor) -> torch.Tensor:
    """Confident logits [1, C, H, W] predicting the class ids of cls_map [H, W]."""
    return (torch.nn.functional.one_hot(cls_map.long(), C).permute(2, 0, 1)[None].float() * 2 - 1) * BIG


def _targets(boxes: list[Box] | None, shape: tuple[int, int] = (12, 12)) -> BoxTargets:
    return BoxTargets.from_boxes([boxes], C, shape, [K])


def test_box_targets_from_boxes():
    t = BoxTargets.from_boxes([[Box(1, 2, 2, 6, 5), Box(2, 0, 0, 1, 1)], None, []], C, (8, 8), [1, 2])
    assert t.boxes.tolist() == [[0, 1, 2, 2, 6, 5], [0, 2, 0, 0, 1, 1]]
    assert t.mask.shape == (3, C, 8, 8) and t.mask[0, 1].sum() == 12 and t.mask[0, 2].sum() == 1
    assert t.mask[1:].sum() == 0 and t.valid.tolist() == [True, False, True]


def test_dice_loss_by_hand():
    assert dice_loss(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0)
    assert dice_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(1.0)
    assert dice_loss(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])).item() == pytest.approx(1 - 1 / 1.5)


def test_projection_loss_values():
    t = _targets([Box(K, 2, 2, 6, 6)])
    perfect = torch.zeros(12, 12)
    perfect[2:6, 2:6] = K
    assert projection_loss(_logits(perfect).softmax(1), t).item() == pytest.approx(0.0, abs=1e-4)
    nothing = torch.zeros(12, 12)
    assert projection_loss(_logits(nothing).softmax(1), t).item() == pytest.approx(2.0, abs=1e-4)
    # Uniform 1/3: crop = box +-2 px = 8 wide, target 1 on 4 of them; dice = 1 - 2(4/3) / (8/9 + 4) = 20/44.
    uniform = torch.full((1, C, 12, 12), 1 / 3)
    assert projection_loss(uniform, t).item() == pytest.approx(2 * 20 / 44, rel=1e-5)
    assert projection_loss(uniform, _targets([])).item() == 0.0


def test_projection_loss_does_not_merge_two_boxes():
    """Boxes touching at a corner: a mask of their bounding rectangle has the same whole-image projections
    as the two boxes, so a whole-image projection loss would accept the merged blob. Per box it costs."""
    boxes = [Box(K, 2, 2, 7, 7), Box(K, 7, 7, 12, 12)]
    t = _targets(boxes, (14, 14))
    exact, merged = torch.zeros(14, 14), torch.zeros(14, 14)
    exact[2:7, 2:7] = K
    exact[7:12, 7:12] = K
    merged[2:12, 2:12] = K
    p_exact, p_merged = _logits(exact).softmax(1), _logits(merged).softmax(1)

    def whole_image(p: torch.Tensor) -> float:
        m = t.mask[0, K]
        return (dice_loss(p[0, K].amax(0), m.amax(0)) + dice_loss(p[0, K].amax(1), m.amax(1))).item()

    assert whole_image(p_merged) == pytest.approx(0.0, abs=1e-4)  # the trap
    assert projection_loss(p_exact, t).item() == pytest.approx(0.0, abs=1e-4)
    assert projection_loss(p_merged, t).item() > 0.2


def test_image_similarity_by_hand():
    img = torch.zeros(1, 4, 6, 8)
    img[:, :3] = 0.5
    img[:, 3, :, 4:] = 0.02  # thermal step of 2 on L's 0..100 scale: exp(-2 / 2) across it
    s = image_similarity(img, dilation=2, theta=2.0)
    assert s.shape == (1, 4, 6, 8)
    horiz = s[0, 0]  # offset (0, 2): pixel x with x + 2
    assert horiz[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert horiz[0, 3].item() == pytest.approx(math.exp(-1), rel=1e-4)  # x=3 -> x=5 crosses the step
    assert horiz[:, 6:].abs().sum().item() == 0.0  # neighbour off the image
    assert s[0, 1, 4:].abs().sum().item() == 0.0  # offset (2, 0): last two rows have none


def test_pairwise_loss_values_and_similarity_gate():
    t = _targets([Box(K, 0, 0, 12, 12)])
    flat = torch.full((1, 3, 12, 12), 0.5)
    sim = image_similarity(flat)
    half = torch.zeros(1, C, 12, 12)
    half[:, 2] = -BIG  # p_1 = 0.5 everywhere: every similar pair costs -log(0.5)
    assert pairwise_loss(half.softmax(1), t, sim).item() == pytest.approx(math.log(2), rel=1e-5)
    split = torch.zeros(12, 12)
    split[:, 6:] = K
    p_split = _logits(split).softmax(1)
    assert pairwise_loss(_logits(torch.full((12, 12), K)).softmax(1), t, sim).item() == pytest.approx(0, abs=1e-4)
    assert pairwise_loss(p_split, t, sim).item() > 1.0  # a label edge in a flat region costs
    edge = flat.clone()
    edge[:, :, :, 6:] = 1.0  # an image edge at the label edge: those pairs are dissimilar and not counted
    assert pairwise_loss(p_split, t, image_similarity(edge)).item() == pytest.approx(0.0, abs=1e-4)
    assert pairwise_loss(half.softmax(1), _targets(None), sim).item() == 0.0  # no box labels: nothing


def test_negative_loss_values():
    t = _targets([Box(K, 2, 2, 6, 6)])
    perfect = torch.zeros(12, 12)
    perfect[2:6, 2:6] = K
    assert negative_loss(_logits(perfect).softmax(1), t).item() == pytest.approx(0.0, abs=1e-4)
    uniform = torch.full((1, C, 12, 12), 1 / 3)
    assert negative_loss(uniform, t).item() == pytest.approx(-math.log(2 / 3), rel=1e-5)
    assert negative_loss(uniform, _targets(None)).item() == 0.0  # an image without box labels says nothing
    everywhere = _logits(torch.full((12, 12), K)).softmax(1)
    assert negative_loss(everywhere, t).item() > 10  # class 1 all over the image, outside its box


def test_box_loss_combines_weights_and_checks_shapes():
    t = _targets([Box(K, 2, 2, 6, 6)])
    logits = torch.zeros(1, C, 12, 12)
    images = torch.rand(1, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    total, parts = box_loss(logits, t, images, {"proj": 2.0, "pair": 0.5, "neg": 1.0})
    assert set(parts) == {"proj", "pair", "neg"}
    assert total.item() == pytest.approx(2 * parts["proj"].item() + 0.5 * parts["pair"].item() + parts["neg"].item())
    total, parts = box_loss(logits, t, weights={"pair": 0.0})  # no images needed without the pairwise term
    assert set(parts) == {"proj", "neg"}
    with pytest.raises(ValueError, match="needs the images"):
        box_loss(logits, t)
    with pytest.raises(ValueError, match=r"Box\.scaled"):
        box_loss(torch.zeros(1, C, 6, 6), t, images)


def test_gradients_are_finite_and_one_sgd_step_lowers_the_loss():
    g = torch.Generator().manual_seed(0)
    boxes = [[Box(K, 2, 3, 9, 12), Box(2, 10, 1, 15, 6)], [Box(K, 0, 0, 4, 4)]]
    t = BoxTargets.from_boxes(boxes, C, (16, 16), [1, 2])
    images = torch.rand(2, 4, 16, 16, generator=g)
    logits = torch.randn(2, C, 16, 16, generator=g).requires_grad_(True)
    total, _ = box_loss(logits, t, images)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # The negative term pushes the class down outside its boxes; the projection term pulls it up inside.
    x = torch.zeros(1, C, 12, 12, requires_grad=True)
    tb = _targets([Box(K, 2, 2, 6, 6)])
    negative_loss(x.softmax(1), tb).backward()
    assert (x.grad[0, K, 8:, 8:] > 0).all()
    x.grad = None
    projection_loss(x.softmax(1), tb).backward()
    assert x.grad[0, K, 2:6, 2:6].sum() < 0
    with torch.no_grad():
        stepped = logits - 1.0 * logits.grad
    after, _ = box_loss(stepped, t, images)
    assert after.item() < total.item()
