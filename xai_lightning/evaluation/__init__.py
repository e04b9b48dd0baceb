"""Scores for explanations: localisation against ground truth, stability across epochs."""

from xai_lightning.evaluation.localisation import (
    check_mask_shape,
    energy_in_mask,
    pointing_game,
    uniform_energy_in_mask,
)
from xai_lightning.evaluation.map_scores import nanmean, score_maps
from xai_lightning.evaluation.patch_localisation import mass_in_mask_on_grid, patch_coverage
from xai_lightning.evaluation.stability import average_ranks, spearman_correlation
from xai_lightning.evaluation.token_localisation import chance_precision, mass_on_relevant, top_k_precision

__all__ = [
    "average_ranks",
    "chance_precision",
    "check_mask_shape",
    "energy_in_mask",
    "mass_in_mask_on_grid",
    "mass_on_relevant",
    "nanmean",
    "patch_coverage",
    "pointing_game",
    "score_maps",
    "spearman_correlation",
    "top_k_precision",
    "uniform_energy_in_mask",
]
