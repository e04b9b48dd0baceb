"""Interpretable features for the model-agnostic methods: superpixels of images, columns of tables.

LIME and KernelSHAP explain a model in terms of ``M`` interpretable features that are either
present (the input's own values) or absent (a baseline's values). A *feature mask* assigns every
input element to one feature:

* images ``(B, C, H, W)``: a ``(B, H, W)`` long tensor of superpixel ids ``0 … M_b − 1`` per image
  (all channels of a pixel belong to the same superpixel), computed with scikit-image —
  ``"quickshift"`` (LIME's default: kernel 4, max_dist 200, ratio 0.2), ``"slic"``,
  ``"felzenszwalb"`` — or a regular ``"grid"`` of square cells;
* tabular ``(B, D)``: by default every column is its own feature (``M = D``).

A user-given mask replaces the segmentation: ``(B, H, W)`` or ``(H, W)`` for images, ``(B, D)`` or
``(D,)`` for tables. Ids need not be contiguous; they are renumbered ``0 … M_b − 1`` per example.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = ["Segmentation", "feature_masks", "grid_segments", "segment_image"]

Segmentation = Literal["quickshift", "slic", "felzenszwalb", "grid"]
SEGMENTATIONS = ("quickshift", "slic", "felzenszwalb", "grid")


def grid_segments(height: int, width: int, cell: int) -> torch.Tensor:
    """``(H, W)`` ids of a regular grid of ``cell × cell`` squares (the last row/column may be smaller)."""
    if cell < 1:
        raise ValueError(f"grid cell size must be >= 1; got {cell}")
    rows = torch.arange(height) // cell
    cols = torch.arange(width) // cell
    return rows.view(-1, 1) * ((width + cell - 1) // cell) + cols.view(1, -1)


def _as_rgb_unit(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` → ``(H, W, 3)`` float64 in [0, 1] for scikit-image (grey images repeated)."""
    array = image.detach().float().cpu()
    low, high = array.min(), array.max()
    array = (array - low) / (high - low) if high > low else torch.zeros_like(array)
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    elif array.shape[0] != 3:
        # Colour conversion needs RGB; other channel counts are segmented on their channel mean.
        array = array.mean(0, keepdim=True).expand(3, -1, -1)
    return array.permute(1, 2, 0).numpy().astype(np.float64)


def segment_image(image: torch.Tensor, method: Segmentation = "quickshift", **options) -> torch.Tensor:
    """Superpixel ids ``(H, W)`` (long, ``0 … M − 1``) of one image ``(C, H, W)``.

    ``options`` go to the scikit-image function (``grid`` takes ``cell``, default side/4).
    Images are rescaled to [0, 1] per image first, so normalised inputs segment like the raw image.
    """
    height, width = image.shape[-2:]
    if method == "grid":
        return grid_segments(height, width, int(options.get("cell", max(1, min(height, width) // 4))))
    from xai_lightning.extras import require

    skseg = require("skimage.segmentation", f"Superpixels (segmentation={method!r})")

    rgb = _as_rgb_unit(image)
    if method == "quickshift":
        settings = dict(kernel_size=4, max_dist=200, ratio=0.2)  # lime's defaults
        settings.update(options)
        labels = skseg.quickshift(rgb, **settings)
    elif method == "slic":
        settings = dict(n_segments=50, compactness=10.0, start_label=0)
        settings.update(options)
        labels = skseg.slic(rgb, channel_axis=-1, **settings)
    elif method == "felzenszwalb":
        settings = dict(scale=100.0, sigma=0.8, min_size=max(4, height * width // 100))
        settings.update(options)
        labels = skseg.felzenszwalb(rgb, channel_axis=-1, **settings)
    else:
        raise ValueError(f"Unknown segmentation {method!r}; use one of {list(SEGMENTATIONS)}.")
    _, dense = np.unique(labels, return_inverse=True)
    return torch.from_numpy(dense.reshape(height, width).astype(np.int64))


def _renumber(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ids contiguous ``0 … M_b − 1`` per example; returns ``(masks, M (B,))``."""
    flat = masks.flatten(1)
    renumbered = torch.empty_like(flat)
    counts = []
    for row in range(flat.shape[0]):  # cheap bookkeeping, no model evaluation
        _, inverse = torch.unique(flat[row], return_inverse=True)
        renumbered[row] = inverse
        counts.append(int(inverse.max()) + 1)
    return renumbered.view_as(masks), torch.tensor(counts, dtype=torch.long)


def feature_masks(
    inputs: torch.Tensor,
    feature_mask: torch.Tensor | None = None,
    segmentation: Segmentation = "quickshift",
    segmentation_options: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masks, num_features)``: feature ids per input element and ``M_b`` per example.

    Shapes: images ``(B, C, H, W)`` → masks ``(B, H, W)``; tables ``(B, D)`` → ``(B, D)``.

    Raises:
        ValueError: when ``feature_mask`` fits neither shape convention (both shapes are named), or
            for inputs that are neither images nor tables.
    """
    if inputs.dim() not in (2, 4):
        raise ValueError(
            f"Interpretable features are defined for images (B, C, H, W) and tables (B, D); got inputs of "
            f"shape {tuple(inputs.shape)}. Flatten other inputs to (B, D) or pass a model that reshapes them."
        )
    batch = inputs.shape[0]
    spatial = tuple(inputs.shape[2:]) if inputs.dim() == 4 else tuple(inputs.shape[1:])
    if feature_mask is not None:
        mask = torch.as_tensor(feature_mask)
        if mask.is_floating_point() or mask.dtype == torch.bool:
            if mask.is_floating_point() and not torch.equal(mask, mask.round()):
                raise ValueError("A feature mask holds integer feature ids; got fractional values.")
            mask = mask.long()
        if tuple(mask.shape) == spatial:
            mask = mask.unsqueeze(0).expand(batch, *spatial)
        elif tuple(mask.shape) != (batch, *spatial):
            raise ValueError(
                f"Feature mask of shape {tuple(mask.shape)} does not fit inputs of shape {tuple(inputs.shape)}: "
                f"give {(batch, *spatial)} (one per example) or {spatial} (shared)"
                + (" — one id per pixel, shared by the channels." if inputs.dim() == 4 else ".")
            )
        masks, counts = _renumber(mask.cpu().long())
        return masks.to(inputs.device), counts.to(inputs.device)
    if inputs.dim() == 2:
        masks = torch.arange(spatial[0], device=inputs.device).expand(batch, -1).clone()
        return masks, torch.full((batch,), spatial[0], dtype=torch.long, device=inputs.device)
    options = dict(segmentation_options or {})
    segments = torch.stack([segment_image(image, segmentation, **options) for image in inputs.cpu()])
    masks, counts = _renumber(segments)
    return masks.to(inputs.device), counts.to(inputs.device)
