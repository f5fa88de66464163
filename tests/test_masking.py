"""Stage I complementary masks: every cell seen by at least one modality, keep ratio, noise fill."""

from __future__ import annotations

import pytest
import torch

from mafs_core.masking import complementary_cell_masks, complementary_masks, expected_keep_ratio, mask_pair


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.75])
def test_complementary_and_keep_ratio(keep: float) -> None:
    g = torch.Generator().manual_seed(0)
    m_ir, m_vis = complementary_cell_masks(64, 20, 30, keep, g)
    assert (m_ir | m_vis).all()  # every cell visible in at least one modality
    assert (m_ir & m_vis).any() and (~m_ir).any() and (~m_vis).any()  # but genuinely masked
    want = expected_keep_ratio(keep)
    for m in (m_ir, m_vis):
        assert abs(m.float().mean().item() - want) < 0.01
    # cells dropped by both were given to one side only, so overlap is exactly keep^2
    assert abs((m_ir & m_vis).float().mean().item() - keep**2) < 0.01


def test_pixel_masks_are_cell_aligned_and_cropped() -> None:
    g = torch.Generator().manual_seed(1)
    m_ir, m_vis = complementary_masks(2, 50, 70, cell=16, keep_prob=0.5, generator=g)
    assert m_ir.shape == (2, 1, 50, 70) and m_ir.dtype == torch.float32
    assert ((m_ir + m_vis) >= 1).all()
    blocks = m_ir[:, 0, :48, :64].reshape(2, 3, 16, 4, 16)
    assert (blocks.amax((2, 4)) == blocks.amin((2, 4))).all()  # constant inside each 16x16 cell


def test_noise_fill_and_determinism() -> None:
    ir, vis = torch.full((2, 1, 64, 64), 0.5), torch.full((2, 3, 64, 64), 0.5)
    a = mask_pair(ir, vis, 8, 0.5, torch.Generator().manual_seed(5))
    b = mask_pair(ir, vis, 8, 0.5, torch.Generator().manual_seed(5))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    mir, mvis, m_ir, m_vis = a
    assert torch.equal(mir[m_ir.bool()], ir[m_ir.bool()])  # kept pixels untouched
    hidden = mvis[(m_vis == 0).expand_as(mvis)]
    assert hidden.numel() > 1000 and 0 <= hidden.min() and hidden.max() < 1
    assert abs(hidden.mean().item() - 0.5) < 0.02 and hidden.std().item() > 0.25  # uniform noise, not a constant
    c = mask_pair(ir, vis, 8, 0.5, torch.Generator().manual_seed(6))
    assert not torch.equal(c[2], m_ir)
    with pytest.raises(ValueError):
        complementary_masks(1, 8, 8, keep_prob=0.0)
