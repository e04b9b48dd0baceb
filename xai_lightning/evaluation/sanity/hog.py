"""Histograms of oriented gradients (Dalal & Triggs, CVPR 2005) of maps, batched.

The construction of scikit-image's ``hog`` (tested against it): central-difference gradients
(zero on the border rows/columns), unsigned orientations in [0°, 180°) binned without
interpolation, per-cell histograms of gradient magnitude divided by the cell's pixel count,
overlapping blocks normalised with L2-Hys (clip at 0.2). Features are ordered like its
``feature_vector``: block row, block column, cell row, cell column, orientation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["hog_features"]


def hog_features(
    maps: torch.Tensor, orientations: int = 9, pixels_per_cell: int = 4, cells_per_block: int = 2, eps: float = 1e-5
) -> torch.Tensor:
    """HOG descriptors ``(B, n_blocks_row · n_blocks_col · b · b · orientations)`` float64 of maps ``(B, H, W)``."""
    if maps.dim() != 3:
        raise ValueError(f"HOG takes maps (B, H, W); got {tuple(maps.shape)}")
    batch, height, width = maps.shape
    cell, block = pixels_per_cell, cells_per_block
    cells_row, cells_col = height // cell, width // cell
    if cells_row < block or cells_col < block:
        raise ValueError(f"Maps of {height}x{width} are too small for {cell}-pixel cells in blocks of {block} cells")
    m = maps.double()
    g_row = torch.zeros_like(m)
    g_col = torch.zeros_like(m)
    g_row[:, 1:-1, :] = m[:, 2:, :] - m[:, :-2, :]
    g_col[:, :, 1:-1] = m[:, :, 2:] - m[:, :, :-2]
    magnitude = torch.hypot(g_row, g_col)
    orientation = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    bins = torch.floor(orientation / (180.0 / orientations)).long().clamp(0, orientations - 1)
    votes = F.one_hot(bins, orientations).double() * magnitude.unsqueeze(-1)  # (B, H, W, O)
    votes = votes[:, : cells_row * cell, : cells_col * cell]
    histogram = votes.reshape(batch, cells_row, cell, cells_col, cell, orientations).sum((2, 4)) / (cell * cell)
    blocks = histogram.unfold(1, block, 1).unfold(2, block, 1)  # (B, br, bc, O, b, b)
    blocks = blocks.permute(0, 1, 2, 4, 5, 3)  # (B, br, bc, b_row, b_col, O)
    flat = blocks.reshape(*blocks.shape[:3], -1)
    flat = flat / torch.sqrt(flat.square().sum(-1, keepdim=True) + eps**2)
    flat = flat.clamp_max(0.2)
    flat = flat / torch.sqrt(flat.square().sum(-1, keepdim=True) + eps**2)
    return flat.reshape(batch, -1)
