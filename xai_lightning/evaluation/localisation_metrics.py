"""The localisation scores against ground-truth masks as explanation metrics (same interface as the others).

* :class:`PointingGame` (Zhang et al. 2016): 1 where the map's peak lies on the mask.
* :class:`RelevanceMass` (Arras, Osman & Samek 2022, "relevance mass accuracy"): the fraction of
  positive relevance inside the mask — :func:`~xai_lightning.evaluation.localisation.energy_in_mask`.

A constant or all-zero map has no peak and no positive mass; here it scores what a uniform map
would: the mask's area fraction (the chance of a random pixel falling on the mask), not NaN.
Maps are per pixel ``(B, H, W)`` (or shaped like the images, then summed over channels); masks
``(B, H, W)`` bool at the same resolution.

Quantus 0.6.0: ``PointingGame`` counts a hit when *any* of several tied maxima lies on the mask
(ours takes the first in row-major order); ``RelevanceMassAccuracy`` divides signed sums (ours
positive parts). On maps without ties and with non-negative values they agree (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from xai_lightning.core import TargetSpec
from xai_lightning.evaluation.degenerate_map_checks import degenerate_maps, finite_maps
from xai_lightning.evaluation.explanation_metric import ExplanationMetric
from xai_lightning.evaluation.localisation import (
    check_mask_shape,
    energy_in_mask,
    pointing_game,
    uniform_energy_in_mask,
)
from xai_lightning.evaluation.map_shape import check_maps

__all__ = ["PointingGame", "RelevanceMass", "pointing_game_score", "relevance_mass"]


def _pixel_maps(inputs: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor | None, what: str) -> torch.Tensor:
    if masks is None:
        raise ValueError(f"{what} needs ground-truth masks (B, H, W): pass masks= (e.g. ConceptWorld's object_mask).")
    flat = check_maps(inputs, maps)
    if inputs.dim() != 4:
        raise ValueError(f"{what} localises in images (B, C, H, W); got inputs of shape {tuple(inputs.shape)}")
    if flat.shape[1] != inputs.shape[2] * inputs.shape[3]:  # maps shaped like the images: channel sum per pixel
        flat = flat.view(inputs.shape).sum(1)
    pixel_maps = finite_maps(flat.reshape(inputs.shape[0], *inputs.shape[2:]))
    check_mask_shape(pixel_maps, masks)
    return pixel_maps


def relevance_mass(inputs: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B,)`` fraction of positive relevance inside ``masks``; the mask's area for maps without any."""
    pixel_maps = _pixel_maps(inputs, maps, masks, "relevance_mass")
    masks = masks.to(pixel_maps.device).bool()
    score = energy_in_mask(pixel_maps, masks)
    return torch.where(torch.isnan(score), uniform_energy_in_mask(masks), score)


def pointing_game_score(
    inputs: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0
) -> torch.Tensor:
    """``(B,)`` 1.0 where the peak is on the mask (within ``tolerance`` pixels); the mask's area for
    constant maps."""
    pixel_maps = _pixel_maps(inputs, maps, masks, "pointing_game")
    masks = masks.to(pixel_maps.device).bool()
    hits = pointing_game(pixel_maps, masks, tolerance)
    chance = uniform_energy_in_mask(masks)
    return torch.where(degenerate_maps(pixel_maps) | torch.isnan(hits), chance, hits)


class PointingGame(ExplanationMetric):
    """Fraction of maps whose peak lies on the mask; ``update(inputs, maps, targets, masks=...)``."""

    key = "pointing_game"
    higher_is_better = True
    needs_masks = True

    def __init__(self, model: nn.Module | None = None, tolerance: int = 0, **kwargs) -> None:
        super().__init__(model, **kwargs)  # type: ignore[arg-type]
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0; got {tolerance}")
        self.tolerance = tolerance

    def values(
        self,
        inputs: torch.Tensor,
        maps: torch.Tensor,
        targets: TargetSpec = "predicted",
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return pointing_game_score(inputs, maps, masks, self.tolerance)  # type: ignore[arg-type]


class RelevanceMass(ExplanationMetric):
    """Mean fraction of positive relevance inside the mask; ``update(inputs, maps, targets, masks=...)``."""

    key = "relevance_mass"
    higher_is_better = True
    needs_masks = True

    def __init__(self, model: nn.Module | None = None, **kwargs) -> None:
        super().__init__(model, **kwargs)  # type: ignore[arg-type]

    def values(
        self,
        inputs: torch.Tensor,
        maps: torch.Tensor,
        targets: TargetSpec = "predicted",
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return relevance_mass(inputs, maps, masks)  # type: ignore[arg-type]
