"""Stage I complementary grid masking of thermal and visible inputs.

Each modality keeps every grid cell independently with probability `keep_prob`; a cell dropped by both is
handed back to one of them at random, so the pair together always shows the whole scene and the network must
recover each modality from the other one (cross-modal completion, not plain inpainting). Masked pixels are
filled with uniform noise so that "masked" carries no constant-value shortcut.
Expected visible fraction per modality: keep_prob + (1 - keep_prob)^2 / 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expected_keep_ratio(keep_prob: float) -> float:
    return keep_prob + (1.0 - keep_prob) ** 2 / 2.0


def _device(generator: torch.Generator | None, device: torch.device | str) -> torch.device | str:
    return generator.device if generator is not None else device


def complementary_cell_masks(batch: int, grid_h: int, grid_w: int, keep_prob: float = 0.5,
                             generator: torch.Generator | None = None,
                             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean [B,gh,gw] cell masks (True = visible) for IR and VIS with ir | vis everywhere."""
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    shape = (batch, grid_h, grid_w)
    u = torch.rand((3, *shape), generator=generator, device=_device(generator, device))
    ir, vis = u[0] < keep_prob, u[1] < keep_prob
    orphan = ~(ir | vis)
    to_ir = u[2] < 0.5
    return ir | (orphan & to_ir), vis | (orphan & ~to_ir)


def complementary_masks(batch: int, height: int, width: int, cell: int = 16, keep_prob: float = 0.5,
                        generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Float pixel masks [B,1,H,W] (1 = visible) for IR and VIS; cells are `cell` px squares (last row/column
    cropped). With a `generator`, everything is drawn on the generator's device (replayable per step)."""
    if cell < 1:
        raise ValueError(f"cell size must be >= 1, got {cell}")
    gh, gw = -(-height // cell), -(-width // cell)
    m_ir, m_vis = complementary_cell_masks(batch, gh, gw, keep_prob, generator, device)
    up = lambda m: F.interpolate(m[:, None].float(), scale_factor=cell, mode="nearest")[..., :height, :width]  # noqa: E731
    return up(m_ir), up(m_vis)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep x where mask == 1, uniform noise in [0,1) elsewhere."""
    noise = torch.rand(x.shape, generator=generator, device=_device(generator, x.device), dtype=x.dtype)
    return x * mask + noise.to(x.device) * (1.0 - mask)


def mask_pair(ir: torch.Tensor, vis: torch.Tensor, cell: int = 16, keep_prob: float = 0.5,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """(masked_ir, masked_vis, m_ir, m_vis) for a batch ir [B,1,H,W], vis [B,3,H,W]."""
    b, _, h, w = ir.shape
    m_ir, m_vis = complementary_masks(b, h, w, cell, keep_prob, generator, ir.device)
    m_ir, m_vis = m_ir.to(ir.device), m_vis.to(ir.device)
    return apply_mask(ir, m_ir, generator), apply_mask(vis, m_vis, generator), m_ir, m_vis
