"""The per-map scores every map-logging callback reports: localisation against object masks and stability.

One implementation used by :class:`~xai_lightning.callbacks.GradCAMCallback` (per layer) and
:class:`~xai_lightning.callbacks.AttributionCallback` (per method), so their numbers mean the same.
"""

from __future__ import annotations

import torch

from xai_lightning.evaluation.degenerate_map_checks import finite_maps
from xai_lightning.evaluation.localisation import energy_in_mask, pointing_game, uniform_energy_in_mask
from xai_lightning.evaluation.stability import spearman_correlation

__all__ = ["nanmean", "score_maps"]


def nanmean(values: torch.Tensor, fallback: float = float("nan")) -> float:
    """Mean of the finite entries; ``fallback`` when there are none: undefined per-map scores are skipped."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else fallback


def score_maps(
    maps: torch.Tensor, object_masks: torch.Tensor | None = None, previous: torch.Tensor | None = None
) -> dict[str, float]:
    """Scores of heatmaps ``(N, H, W)`` (larger = more relevant), averaged over the maps.

    ===========================  ==================================================================
    ``empty_maps``               fraction of maps with no positive energy (their scores are
                                 undefined and excluded from the means)
    ``energy_in_mask``           mean fraction of positive energy inside the object mask
    ``energy_in_mask_uniform``   the same for a uniform map (= mask area): the baseline to beat
    ``pointing_game``            fraction of maps whose peak lies on the object
    ``stability``                mean Spearman ρ with ``previous`` (the same images' maps at the
                                 previous observation)
    ===========================  ==================================================================

    The mask scores need ``object_masks`` ``(N, H, W)`` bool; ``stability`` needs ``previous`` of
    the same shape as ``maps`` (otherwise those keys are absent).

    NaN/inf map entries count as 0. When *every* map is empty the means have nothing to average;
    then the scores are those of a uniform map — ``energy_in_mask`` and ``pointing_game`` the mask
    area (chance), ``stability`` 0 — never NaN. The callers warn once, naming the layer or method.
    """
    maps = finite_maps(maps)
    scores = {"empty_maps": float((maps.clamp_min(0).flatten(1).sum(1) <= 0).float().mean())}
    if object_masks is not None:
        chance = float(uniform_energy_in_mask(object_masks).mean())
        scores["energy_in_mask"] = nanmean(energy_in_mask(maps, object_masks), fallback=chance)
        scores["energy_in_mask_uniform"] = chance
        scores["pointing_game"] = nanmean(pointing_game(maps, object_masks), fallback=chance)
    if previous is not None and previous.shape == maps.shape:
        scores["stability"] = nanmean(spearman_correlation(maps, finite_maps(previous)), fallback=0.0)
    return scores
