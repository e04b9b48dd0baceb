"""Robustness: attacks, adversarial-training losses, perceptually aligned gradients, inversion and
feature visualisation — pure torch, in ``[0, 1]`` pixel space, every forward pass inside the observer
guard (eval mode, BatchNorm statistics untouched, parameters' ``.grad`` never written).
"""

from xai_lightning.robustness.fast_gradient_sign import FGSM, fgsm
from xai_lightning.robustness.feature_visualization import (
    PRIORS,
    FeatureVisualization,
    direction_objective,
    visualize_features,
)
from xai_lightning.robustness.fourier_image import IMAGENET_COLOUR_SQRT, FourierImage, colour_correlation_sqrt
from xai_lightning.robustness.gradient_maps import (
    GradientMaps,
    gradient_energy,
    gradient_images,
    gradient_object_energy,
    loss_gradients,
)
from xai_lightning.robustness.image_regularizers import alpha_norm, total_variation
from xai_lightning.robustness.inversion import InversionResult, invert_representation
from xai_lightning.robustness.norm_ball import (
    Norm,
    check_eps,
    check_norm,
    perturbation_norm,
    project,
    random_point,
    steepest_direction,
)
from xai_lightning.robustness.pixel_space import PixelRangeError, PixelSpace
from xai_lightning.robustness.projected_gradient_descent import PGD, AttackResult, default_eps, default_step_size, pgd
from xai_lightning.robustness.random_transforms import random_affine
from xai_lightning.robustness.representation import LOGITS, Representation
from xai_lightning.robustness.targeted_morphing import default_morph_eps, morph_to_every_class, targeted_morph
from xai_lightning.robustness.trades import TradesBatch, trades_adversarial, trades_kl, trades_loss
from xai_lightning.robustness.vae import ConvVAE, train_vae, vae_loss

__all__ = [
    "AttackResult",
    "ConvVAE",
    "FGSM",
    "FeatureVisualization",
    "FourierImage",
    "GradientMaps",
    "IMAGENET_COLOUR_SQRT",
    "InversionResult",
    "LOGITS",
    "Norm",
    "PGD",
    "PRIORS",
    "PixelRangeError",
    "PixelSpace",
    "Representation",
    "TradesBatch",
    "alpha_norm",
    "check_eps",
    "check_norm",
    "colour_correlation_sqrt",
    "default_eps",
    "default_morph_eps",
    "default_step_size",
    "direction_objective",
    "fgsm",
    "gradient_energy",
    "gradient_images",
    "gradient_object_energy",
    "invert_representation",
    "loss_gradients",
    "morph_to_every_class",
    "perturbation_norm",
    "pgd",
    "project",
    "random_affine",
    "random_point",
    "steepest_direction",
    "targeted_morph",
    "total_variation",
    "trades_adversarial",
    "trades_kl",
    "trades_loss",
    "train_vae",
    "vae_loss",
    "visualize_features",
]
