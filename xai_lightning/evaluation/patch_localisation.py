"""Mass of patch-grid maps (a ViT's attention) inside pixel masks, without upsampling the maps.

A map over the ``h × w`` patches of an ``H × W`` image puts mass ``a_p`` on patch ``p``; the
fraction of it inside a pixel mask is ``Σ_p a_p · c_p / Σ_p a_p`` with ``c_p`` the fraction of
patch ``p``'s pixels in the mask — exactly :func:`~xai_lightning.evaluation.energy_in_mask` of
the map upsampled by nearest neighbour, at ``h·w`` instead of ``H·W`` cost per map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mass_in_mask_on_grid", "patch_coverage"]


def patch_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` fraction of each patch's pixels inside ``masks (B, H, W)``.

    Raises:
        ValueError: when the image sides are not multiples of the grid's.
    """
    height, width = masks.shape[-2:]
    if height % grid[0] or width % grid[1]:
        raise ValueError(f"Masks of {height}x{width} pixels do not split into a {grid[0]}x{grid[1]} patch grid.")
    return F.avg_pool2d(masks.float().unsqueeze(1), (height // grid[0], width // grid[1])).squeeze(1)


def mass_in_mask_on_grid(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fraction of the positive mass of ``maps (B, ..., h, w)`` inside ``masks (B, H, W)``; ``(B, ...)``.

    NaN where a map has no positive mass.
    """
    coverage = patch_coverage(masks, (maps.shape[-2], maps.shape[-1])).double()  # (B, h, w)
    positive = maps.double().clamp_min(0)
    view = coverage.view(coverage.shape[0], *([1] * (maps.dim() - 3)), *coverage.shape[1:])
    inside = (positive * view).flatten(-2).sum(-1)
    total = positive.flatten(-2).sum(-1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), torch.nan).float()
