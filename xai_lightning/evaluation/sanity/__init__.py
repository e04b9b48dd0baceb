"""Sanity checks for explanations (Adebayo et al. 2018): model-parameter randomisation and map similarity.

Data randomisation (training on permuted labels) is an experiment: ``experiments/sanity_checks/``.
"""

from xai_lightning.evaluation.sanity.hog import hog_features
from xai_lightning.evaluation.sanity.image_similarity import structural_similarity
from xai_lightning.evaluation.sanity.parameter_randomisation import (
    ModelParameterRandomisation,
    RandomisationResult,
    model_parameter_randomisation,
)
from xai_lightning.evaluation.sanity.randomisation import (
    RandomisationMode,
    private_copy,
    randomisable_layers,
    randomised_copies,
)
from xai_lightning.evaluation.sanity.similarity import (
    SIMILARITIES,
    Similarity,
    hog_pearson,
    map_similarity,
    scaled_magnitude,
    spearman_abs,
    spearman_signed,
    ssim,
)

__all__ = [
    "SIMILARITIES",
    "ModelParameterRandomisation",
    "RandomisationMode",
    "RandomisationResult",
    "Similarity",
    "hog_features",
    "hog_pearson",
    "map_similarity",
    "model_parameter_randomisation",
    "private_copy",
    "randomisable_layers",
    "randomised_copies",
    "scaled_magnitude",
    "spearman_abs",
    "spearman_signed",
    "ssim",
    "structural_similarity",
]
