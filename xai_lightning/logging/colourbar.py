"""Colourbars under the map columns of a labelled grid: the colormap and the values at its ends."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xai_lightning.logging.colormap import MapScale, apply_colormap, colormap_table, scale_maps

__all__ = ["Colourbar", "colourbar_pixels", "scaled_heatmaps"]


@dataclass(frozen=True)
class Colourbar:
    """A horizontal colourbar: ``colormap`` from ``low`` (left) to ``high`` (right), ``middle`` centred.

    Build it from the scale the maps were drawn with: ``Colourbar.of(scale, "jet")``.
    """

    colormap: str
    low: str
    high: str
    middle: str | None = None

    @classmethod
    def of(cls, scale: MapScale, colormap: str) -> "Colourbar":
        low, high, middle = scale.labels()
        return cls(colormap, low, high, middle)


def colourbar_pixels(colormap: str, width: int, height: int) -> np.ndarray:
    """``(height, width, 3)`` uint8: the colormap left (0) to right (1)."""
    table = colormap_table(colormap).numpy()
    positions = np.linspace(0, 255, max(width, 1)).round().astype(np.int64)
    row = (table[positions] * 255).round().astype(np.uint8)
    return np.repeat(row[None], max(height, 1), axis=0)


def scaled_heatmaps(maps: torch.Tensor, shown: int, colormap: str, normalise: str) -> tuple[torch.Tensor, Colourbar]:
    """Colour the first ``shown`` of ``maps (N, H, W)`` on a scale found over *all* N (the whole probe
    set, so ``"per_epoch"`` means the epoch, not the rows on display) → ``(shown, H, W, 3)`` float in
    [0, 1], and the colourbar of that scale for the grid."""
    scaled, scale = scale_maps(maps, normalise)
    return apply_colormap(scaled[:shown], colormap), Colourbar.of(scale, colormap)
