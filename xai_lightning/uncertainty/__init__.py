"""Uncertainty, calibration and out-of-distribution detection — pure torch, no Lightning.

* calibration: ECE/MCE (15 bins), NLL, Brier, reliability-diagram bins; temperature scaling;
* sampling methods: MC dropout, vectorised deep ensembles, Bayes by Backprop layers — each gives
  ``(S, N, K)`` samples summarised by predictive entropy, mutual information (BALD) and std;
* familiarity: an autoencoder's reconstruction error;
* OOD detection by any score: AUROC and FPR at 95 % TPR.

Random draws of the sampling methods come from :class:`KeyedNoise` (keyed by example), never
from a global generator.
"""

from xai_lightning.uncertainty.bayesian import (
    BayesianConv2d,
    BayesianLayer,
    BayesianLinear,
    bayesian_layers,
    bayesian_logits,
    bayesian_predict,
    keyed_weight_noise,
    kl_divergence,
    make_bayesian,
)
from xai_lightning.uncertainty.calibration import (
    CalibrationBins,
    CalibrationReport,
    calibration_report,
    expected_calibration_error,
)
from xai_lightning.uncertainty.ensemble import VectorisedEnsemble, reinitialise
from xai_lightning.uncertainty.familiarity import (
    FamiliarityAutoencoder,
    fit_autoencoder,
    reconstruction_error,
    training_step,
)
from xai_lightning.uncertainty.keyed_noise import KeyedNoise
from xai_lightning.uncertainty.mc_dropout import (
    MCDropoutError,
    dropout_layers,
    keyed_dropout,
    mc_dropout_logits,
    mc_dropout_predict,
)
from xai_lightning.uncertainty.ood import OODDetection, fpr_at_tpr, ood_auroc, ood_detection
from xai_lightning.uncertainty.packed_ensemble import UnsupportedForPacking
from xai_lightning.uncertainty.predictive import (
    PredictiveSummary,
    entropy,
    expected_entropy,
    keyed_forward,
    mutual_information,
    predictive_std,
    sample_passes,
    sample_passes_sharing_prefix,
    sampled_logits,
    summarise_samples,
)
from xai_lightning.uncertainty.temperature_scaling import TemperatureFit, cross_fitted_probs, fit_temperature

__all__ = [
    "BayesianConv2d",
    "BayesianLayer",
    "BayesianLinear",
    "CalibrationBins",
    "CalibrationReport",
    "FamiliarityAutoencoder",
    "KeyedNoise",
    "MCDropoutError",
    "OODDetection",
    "PredictiveSummary",
    "TemperatureFit",
    "UnsupportedForPacking",
    "VectorisedEnsemble",
    "bayesian_layers",
    "bayesian_logits",
    "bayesian_predict",
    "calibration_report",
    "cross_fitted_probs",
    "dropout_layers",
    "entropy",
    "expected_calibration_error",
    "expected_entropy",
    "fit_autoencoder",
    "fit_temperature",
    "fpr_at_tpr",
    "keyed_dropout",
    "keyed_forward",
    "keyed_weight_noise",
    "kl_divergence",
    "make_bayesian",
    "mc_dropout_logits",
    "mc_dropout_predict",
    "mutual_information",
    "ood_auroc",
    "ood_detection",
    "predictive_std",
    "reconstruction_error",
    "reinitialise",
    "sample_passes",
    "sample_passes_sharing_prefix",
    "sampled_logits",
    "summarise_samples",
    "training_step",
]
