"""How similar two explanation maps are — the four measures of Adebayo et al. (2018).

================  ===============================================================================
``spearman_abs``  Spearman rank correlation of the absolute maps
``spearman``      Spearman rank correlation of the signed maps
``ssim``          structural similarity of the maps' absolute values, each scaled to [0, 1]
``hog_pearson``   Pearson correlation of the HOG descriptors of those scaled maps
================  ===============================================================================

All take map pairs ``(B, H, W)`` and return ``(B,)`` float64, batched. A map that is constant
(all zero included) or non-finite has no ranking and no gradients: the correlations with it are
0 (not NaN), and SSIM compares its all-zero scaling; callers warn about such maps
(:mod:`~xai_lightning.evaluation.degenerate_map_checks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from xai_lightning.evaluation.degenerate_map_checks import finite_maps
from xai_lightning.evaluation.faithfulness import pearson_rows
from xai_lightning.evaluation.sanity.hog import hog_features
from xai_lightning.evaluation.sanity.image_similarity import structural_similarity
from xai_lightning.evaluation.stability import spearman_correlation

__all__ = [
    "SIMILARITIES",
    "Similarity",
    "hog_pearson",
    "map_similarity",
    "scaled_magnitude",
    "spearman_abs",
    "spearman_signed",
    "ssim",
]

Similarity = Literal["spearman_abs", "spearman", "ssim", "hog_pearson"]


def _check(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"Maps to compare differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() != 3:
        raise ValueError(f"Similarities compare maps (B, H, W); got {tuple(a.shape)}")
    return finite_maps(a), finite_maps(b)


def spearman_signed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman ρ of the signed maps; 0 where either is constant."""
    a, b = _check(a, b)
    return torch.nan_to_num(spearman_correlation(a, b).double(), nan=0.0)


def spearman_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman ρ of the absolute maps; 0 where either is constant."""
    a, b = _check(a, b)
    return torch.nan_to_num(spearman_correlation(a.abs(), b.abs()).double(), nan=0.0)


def scaled_magnitude(maps: torch.Tensor) -> torch.Tensor:
    """``|m|`` min-max scaled to [0, 1] per map (all zero for a map of constant magnitude)."""
    magnitude = finite_maps(maps).abs().double()
    low = magnitude.flatten(1).amin(1).view(-1, 1, 1)
    span = magnitude.flatten(1).amax(1).view(-1, 1, 1) - low
    return torch.where(span > 0, (magnitude - low) / span.clamp_min(1e-300), torch.zeros_like(magnitude))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM (7×7 window, data range 1) of the scaled magnitudes."""
    a, b = _check(a, b)
    return structural_similarity(scaled_magnitude(a), scaled_magnitude(b), data_range=1.0)


def hog_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of HOG descriptors (9 orientations, 4-pixel cells, 2×2 blocks) of the scaled
    magnitudes; cells of ``side // 8`` pixels when that is larger, so 224-pixel maps get 28-pixel cells."""
    a, b = _check(a, b)
    cell = max(4, min(a.shape[1:]) // 8)
    return pearson_rows(
        hog_features(scaled_magnitude(a), pixels_per_cell=cell), hog_features(scaled_magnitude(b), pixels_per_cell=cell)
    )


SIMILARITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "spearman_abs": spearman_abs,
    "spearman": spearman_signed,
    "ssim": ssim,
    "hog_pearson": hog_pearson,
}


def map_similarity(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The similarity called ``name`` (a key of :data:`SIMILARITIES`) of map pairs → ``(B,)``."""
    if name not in SIMILARITIES:
        raise ValueError(f"Unknown similarity {name!r}; use one of {list(SIMILARITIES)}.")
    return SIMILARITIES[name](a, b)
