"""Heatmap overlays and conversion of image tensors to the uint8 HWC arrays every sink accepts."""

from __future__ import annotations

import numpy as np
import torch

from xai_lightning.logging.colormap import apply_colormap, scale_maps

__all__ = ["blend", "display_images", "heatmaps", "overlay", "to_uint8_hwc"]


def display_images(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, H, W, 3)`` float in [0, 1] for display.

    Images already in [0, 1] are shown as they are (our convention: normalisation lives inside
    the model); anything else is min-max scaled per image. Grey images are replicated to RGB.
    """
    images = images.detach().float().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] != 3:
        raise ValueError(f"Can display 1- or 3-channel images; got {images.shape[1]} channels")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        flat = images.flatten(1)
        low, high = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
        images = (images - low) / (high - low).clamp_min(1e-12)
    return images.permute(0, 2, 3, 1)


def heatmaps(maps: torch.Tensor, colormap: str = "jet", normalise: str = "per_map") -> torch.Tensor:
    """Scaled (``normalise``, see :mod:`~xai_lightning.logging.colormap`), colour-mapped
    ``(B, H, W)`` → ``(B, H, W, 3)`` float in [0, 1]."""
    return apply_colormap(scale_maps(maps.detach().float().cpu(), normalise)[0], colormap)


def overlay(
    images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5, colormap: str = "jet", normalise: str = "per_map"
) -> torch.Tensor:
    """Blend colour-mapped ``maps (B, H, W)`` over ``images (B, C, H, W)`` → ``(B, H, W, 3)`` in [0, 1]."""
    if tuple(images.shape[-2:]) != tuple(maps.shape[1:]):
        raise ValueError(f"Images {tuple(images.shape[-2:])} and maps {tuple(maps.shape[1:])} differ in size")
    return blend(images, heatmaps(maps, colormap, normalise), alpha)


def blend(images: torch.Tensor, colours: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``images (B, C, H, W)`` and colour-mapped maps ``(B, H, W, 3)`` → their blend ``(B, H, W, 3)``.

    For maps scaled once over a whole probe set (:func:`~xai_lightning.logging.scale_maps`) and
    shown for a few of its images.
    """
    shown = display_images(images)
    if shown.shape[1:3] != colours.shape[1:3]:
        raise ValueError(f"Images {tuple(shown.shape[1:3])} and maps {tuple(colours.shape[1:3])} differ in size")
    return (1 - alpha) * shown + alpha * colours


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """``(..., H, W, 3)`` float in [0, 1] → uint8 numpy array (what ``wandb.Image`` wants)."""
    return (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
