"""Maps that carry no ranking: all zero, constant, or with NaN/inf entries.

An untrained network's Grad-CAM is often all zero (its ReLU removes everything), a randomised
network's too, and a division by a zero norm upstream gives NaN. No score is defined on such a
map in the usual way (a rank correlation with a constant, the peak of a flat map). Every metric
in :mod:`xai_lightning.evaluation` therefore gives them a *defined* value, stated in its docstring
(as a uniform map would score: chance for localisation, 0 for correlations), never NaN; the
callers warn once, naming the method and layer, through :func:`degenerate_warning`.
"""

from __future__ import annotations

import torch

__all__ = ["DegenerateMapWarning", "degenerate_maps", "degenerate_warning", "finite_maps"]


class DegenerateMapWarning(UserWarning):
    """Some maps were all zero, constant or non-finite and were scored with the documented fallback."""


def degenerate_maps(maps: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the map has a non-finite entry or is constant (all zero included)."""
    flat = maps.detach().flatten(1)
    non_finite = ~torch.isfinite(flat).all(1)
    finite = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
    constant = finite.amax(1) == finite.amin(1)
    return non_finite | constant


def finite_maps(maps: torch.Tensor) -> torch.Tensor:
    """``maps`` with NaN and ±inf replaced by 0 (a non-finite entry carries no ranking)."""
    return torch.nan_to_num(maps.detach(), nan=0.0, posinf=0.0, neginf=0.0)


def degenerate_warning(count: int, total: int, what: str, handling: str) -> str:
    """The one message every caller emits: how many maps of ``what`` were degenerate and how they were scored."""
    return (
        f"{count} of {total} maps of {what} are all zero, constant or contain NaN/inf; {handling}. An untrained "
        "or randomised network often gives such maps (Grad-CAM's ReLU removes everything); if it persists, "
        "check the method's layer and target."
    )
