"""From attributions to one heatmap per image: how channel dimensions are reduced for display and scoring.

Pixel attributions ``(B, C, H, W)`` carry one value per colour channel; a heatmap wants one per
pixel ``(B, H, W)``. Each method declares its reduction:

=============  =================================================================================
``abs_max``    max over channels of ``|a|`` — Simonyan et al.'s saliency map
``abs_sum``    sum over channels of ``|a|`` — magnitude of signed attributions (IG, DeepLIFT, ...)
``sum``        signed sum over channels — for maps whose sign means evidence for/against
``mean``       mean over channels — occlusion's drop, identical in every channel
``none``       the method already returns ``(B, H, W)`` (the CAM family, RISE, LIME, XRAI)
=============  =================================================================================
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["MapReduction", "reduce_to_map"]

MapReduction = Literal["abs_max", "abs_sum", "sum", "mean", "none"]


def reduce_to_map(attribution: torch.Tensor, reduction: MapReduction) -> torch.Tensor:
    """``(B, C, H, W)`` (or already ``(B, H, W)``) attributions → ``(B, H, W)`` float maps."""
    if attribution.dim() == 3:
        return attribution.float()
    if attribution.dim() != 4:
        raise ValueError(
            f"Heatmaps need image attributions (B, C, H, W) or maps (B, H, W); got shape {tuple(attribution.shape)}"
        )
    a = attribution.float()
    if reduction == "abs_max":
        return a.abs().amax(dim=1)
    if reduction == "abs_sum":
        return a.abs().sum(dim=1)
    if reduction == "sum":
        return a.sum(dim=1)
    if reduction in ("mean", "none"):
        return a.mean(dim=1)
    raise ValueError(f"Unknown map reduction {reduction!r}")
