"""Map saliency values to colours, batched in torch, with a choice of scale.

How a map's values become colours decides what a figure can show. Scaling each map by its own
minimum and maximum (``"per_map"``, the classic Grad-CAM display) makes every map use the full
colour range, which hides magnitude: a map that shrank tenfold since the last epoch looks the
same. The other modes share one scale across all maps of an observation, and the grid's colourbar
prints that scale, so magnitudes compare across images and, reading the colourbars, across epochs:

=================  ===============================================================================
``"per_map"``      each map to [0, 1] by its own min and max (constant maps → 0)
``"per_epoch"``    one range for all maps of the observation: [min(0, min), max]
``"percentile"``   like ``"per_epoch"`` with the top clipped at the 99th percentile of the values
                   (one hot pixel no longer washes out every other map)
``"signed"``       symmetric around zero, ±max|value| of the observation, for signed attributions
                   (Integrated Gradients, Grad-CAM without ReLU); use a diverging colormap
=================  ===============================================================================
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "NORMALISE_MODES",
    "MapScale",
    "NormaliseMode",
    "apply_colormap",
    "check_normalise",
    "colormap_table",
    "normalize_maps",
    "scale_maps",
]

NormaliseMode = Literal["per_map", "per_epoch", "percentile", "signed"]
NORMALISE_MODES: tuple[str, ...] = ("per_map", "per_epoch", "percentile", "signed")


def check_normalise(mode: str) -> str:
    """``mode`` if it is one of :data:`NORMALISE_MODES`; a ValueError listing them otherwise."""
    if mode not in NORMALISE_MODES:
        raise ValueError(f"normalise must be one of {', '.join(map(repr, NORMALISE_MODES))}; got {mode!r}")
    return mode


def display_colormap(colormap: str | None, normalise: str) -> str:
    """The colormap to draw maps with: ``colormap``, or by default ``"jet"`` (``"RdBu_r"``, diverging,
    for ``normalise="signed"``). Checks both names now, so a typo fails at construction."""
    check_normalise(normalise)
    name = colormap or ("RdBu_r" if normalise == "signed" else "jet")
    colormap_table(name)
    return name


@functools.lru_cache(maxsize=16)
def colormap_table(name: str) -> torch.Tensor:
    """``(256, 3)`` float32 RGB in [0, 1] of a matplotlib colormap (a ValueError for unknown names)."""
    import matplotlib
    import numpy as np

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"Unknown colormap {name!r}; use a matplotlib name such as 'jet', 'turbo', 'inferno'."
        ) from None
    # NumPy, not torch: under a true-precision trainer the default torch dtype may be bfloat16.
    return torch.from_numpy(np.asarray(cmap(np.linspace(0.0, 1.0, 256))[:, :3], dtype=np.float32))


_lookup_table = colormap_table  # the name callbacks used to validate colormaps with


@dataclass(frozen=True)
class MapScale:
    """The value range that was mapped to [0, 1]: ``low`` → 0, ``high`` → 1 (None: per map)."""

    mode: str
    low: float | None = None
    high: float | None = None

    def labels(self) -> tuple[str, str, str | None]:
        """Colourbar labels: (left end, right end, middle or None)."""
        if self.low is None or self.high is None:
            return "min", "max", "each map"
        middle = "0" if self.mode == "signed" else None
        top = f"{self.high:.3g}" + (" (p99)" if self.mode == "percentile" else "")
        return f"{self.low:.3g}", top, middle


def scale_maps(maps: torch.Tensor, mode: str = "per_map", percentile: float = 99.0) -> tuple[torch.Tensor, MapScale]:
    """``maps (B, H, W)`` → values in [0, 1] (float32) and the :class:`MapScale` that was used."""
    check_normalise(mode)
    flat = maps.detach().float().flatten(1)
    if mode == "per_map" or flat.numel() == 0:
        lows = flat.amin(1, keepdim=True) if flat.numel() else flat.new_zeros(flat.shape[0], 1)
        spans = (flat.amax(1, keepdim=True) - lows) if flat.numel() else flat.new_zeros(flat.shape[0], 1)
        per_map = torch.where(spans > 0, (flat - lows) / spans.clamp_min(1e-12), torch.zeros_like(flat))
        return per_map.view(maps.shape), MapScale(mode)
    finite = flat[torch.isfinite(flat)]
    if mode == "signed":
        bound = float(finite.abs().max()) if finite.numel() else 0.0
        signed = 0.5 + 0.5 * flat / bound if bound > 0 else torch.full_like(flat, 0.5)
        return signed.clamp(0, 1).view(maps.shape), MapScale(mode, -bound, bound)
    low = min(float(finite.min()), 0.0) if finite.numel() else 0.0
    if mode == "percentile" and finite.numel():
        rank = max(1, min(finite.numel(), int(round(percentile / 100.0 * finite.numel()))))
        high = float(finite.kthvalue(rank).values)
    else:
        high = float(finite.max()) if finite.numel() else 0.0
    span = high - low
    scaled = (flat - low) / span if span > 0 else torch.zeros_like(flat)
    return scaled.clamp(0, 1).view(maps.shape), MapScale(mode, low, high)


def normalize_maps(maps: torch.Tensor, mode: str = "per_map") -> torch.Tensor:
    """Scale ``(B, H, W)`` maps to [0, 1] (see :func:`scale_maps`; default: each by its own min and max)."""
    return scale_maps(maps, mode)[0]


def apply_colormap(maps: torch.Tensor, name: str = "jet") -> torch.Tensor:
    """Colour ``(B, H, W)`` values in [0, 1] → ``(B, H, W, 3)`` float32 RGB in [0, 1]."""
    table = colormap_table(name).to(maps.device)
    index = (maps.float().nan_to_num(0.0).clamp(0, 1) * 255).round().long()
    return table[index]
