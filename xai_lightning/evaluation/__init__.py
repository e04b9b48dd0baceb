"""Scores for explanations: faithfulness, robustness, localisation, stability, chance levels, sanity checks.

Every metric is a function returning one value per example and a ``torchmetrics.Metric``
(``update(inputs, maps, targets)`` / ``compute()`` / ``reset()``, states summed across DDP ranks),
batched over all perturbation steps of all images; :func:`random_map_reference` gives each one's
chance level on the same images. Sanity checks live in :mod:`xai_lightning.evaluation.sanity`.
Pure torch: nothing here imports Lightning.
"""

from xai_lightning.evaluation.degenerate_map_checks import (
    DegenerateMapWarning,
    degenerate_maps,
    degenerate_warning,
    finite_maps,
)
from xai_lightning.evaluation.deletion_insertion import (
    DeletionAUC,
    InsertionAUC,
    PerturbationCurve,
    deletion_auc,
    feature_ranks,
    insertion_auc,
    perturbation_curve,
)
from xai_lightning.evaluation.explanation_infidelity import Infidelity, infidelity
from xai_lightning.evaluation.explanation_metric import ExplanationMetric
from xai_lightning.evaluation.faithfulness import (
    FaithfulnessCorrelation,
    faithfulness_correlation,
)
from xai_lightning.evaluation.linear_imputation import noisy_linear_imputation
from xai_lightning.evaluation.localisation import (
    check_mask_shape,
    energy_in_mask,
    pointing_game,
    uniform_energy_in_mask,
)
from xai_lightning.evaluation.localisation_metrics import (
    PointingGame,
    RelevanceMass,
    pointing_game_score,
    relevance_mass,
)
from xai_lightning.evaluation.map_scores import nanmean, score_maps
from xai_lightning.evaluation.map_shape import check_maps
from xai_lightning.evaluation.metric_registry import (
    available_metrics,
    build_metric,
    metric_direction,
    metric_needs_masks,
    metric_option_names,
)
from xai_lightning.evaluation.patch_localisation import mass_in_mask_on_grid, patch_coverage
from xai_lightning.evaluation.random_reference import RandomMapReference, random_map_reference, random_maps
from xai_lightning.evaluation.remove_and_debias import ROAD, RoadCurve, road, road_curve
from xai_lightning.evaluation.sensitivity import MaxSensitivity, max_sensitivity
from xai_lightning.evaluation.stability import average_ranks, spearman_correlation
from xai_lightning.evaluation.token_localisation import chance_precision, mass_on_relevant, top_k_precision

__all__ = [
    "ROAD",
    "DegenerateMapWarning",
    "DeletionAUC",
    "ExplanationMetric",
    "FaithfulnessCorrelation",
    "Infidelity",
    "InsertionAUC",
    "MaxSensitivity",
    "PerturbationCurve",
    "PointingGame",
    "RandomMapReference",
    "RelevanceMass",
    "RoadCurve",
    "available_metrics",
    "average_ranks",
    "chance_precision",
    "build_metric",
    "check_maps",
    "check_mask_shape",
    "degenerate_maps",
    "degenerate_warning",
    "deletion_auc",
    "energy_in_mask",
    "mass_in_mask_on_grid",
    "mass_on_relevant",
    "nanmean",
    "patch_coverage",
    "faithfulness_correlation",
    "feature_ranks",
    "finite_maps",
    "infidelity",
    "insertion_auc",
    "max_sensitivity",
    "metric_direction",
    "metric_needs_masks",
    "metric_option_names",
    "noisy_linear_imputation",
    "perturbation_curve",
    "pointing_game",
    "pointing_game_score",
    "random_map_reference",
    "random_maps",
    "relevance_mass",
    "road",
    "road_curve",
    "score_maps",
    "spearman_correlation",
    "top_k_precision",
    "uniform_energy_in_mask",
]
