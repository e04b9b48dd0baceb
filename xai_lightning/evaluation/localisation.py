"""How well a saliency map localises the object: energy inside the mask and the pointing game.

Both take non-negative maps ``(B, H, W)`` and boolean masks ``(B, H, W)`` at the same
resolution. A map with no positive energy (all zeros, e.g. Grad-CAM of an untrained network
whose ReLU removes everything) localises nothing: its scores are NaN, and the callers average
with ``nanmean`` and report how many maps were undefined.
"""

from __future__ import annotations

import torch

__all__ = ["check_mask_shape", "energy_in_mask", "pointing_game", "uniform_energy_in_mask"]


def check_mask_shape(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.shape != masks.shape:
        raise ValueError(
            f"Saliency maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape; "
            "resize the masks to the map resolution (B, H, W) first."
        )


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fraction of positive map energy inside the mask, per example: ``Σ_mask m⁺ / Σ m⁺`` → ``(B,)``.

    A uniform map scores the mask's area fraction (:func:`uniform_energy_in_mask`), which is the
    baseline a useful explanation must beat.
    """
    check_mask_shape(maps, masks)
    positive = maps.clamp_min(0).flatten(1).double()
    inside = (positive * masks.flatten(1)).sum(1)
    total = positive.sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), torch.nan).float()


def uniform_energy_in_mask(masks: torch.Tensor) -> torch.Tensor:
    """:func:`energy_in_mask` of a constant map: the mask's area fraction, ``(B,)``."""
    return masks.flatten(1).float().mean(1)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """1.0 where the map's maximum falls on the mask (within ``tolerance`` pixels), else 0.0; ``(B,)``.

    Zhang et al. (2016) use a 15-pixel tolerance at ImageNet resolution; at 32×32 the default is
    0 (the peak pixel itself). Ties are broken towards the first pixel in row-major order.
    Constant maps have no peak and score NaN.
    """
    check_mask_shape(maps, masks)
    batch, _height, width = maps.shape
    flat = maps.flatten(1)
    peak = flat.argmax(1)
    row, col = peak // width, peak % width
    target = masks.bool()
    if tolerance > 0:
        # Dilate the mask by a (2t+1)² window instead of searching around the peak.
        target = (
            torch.nn.functional.max_pool2d(
                target.float().unsqueeze(1), kernel_size=2 * tolerance + 1, stride=1, padding=tolerance
            )
            .squeeze(1)
            .bool()
        )
    hit = target[torch.arange(batch, device=maps.device), row, col].float()
    constant = flat.amax(1) == flat.amin(1)
    return torch.where(constant, torch.nan, hit)
