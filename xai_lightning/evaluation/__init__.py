"""Scores for explanations: localisation against ground truth, stability across epochs."""

from xai_lightning.evaluation.localisation import (
    check_mask_shape,
    energy_in_mask,
    pointing_game,
    uniform_energy_in_mask,
)
from xai_lightning.evaluation.map_scores import nanmean, score_maps
from xai_lightning.evaluation.stability import average_ranks, spearman_correlation

__all__ = [
    "average_ranks",
    "check_mask_shape",
    "energy_in_mask",
    "nanmean",
    "pointing_game",
    "score_maps",
    "spearman_correlation",
    "uniform_energy_in_mask",
]
