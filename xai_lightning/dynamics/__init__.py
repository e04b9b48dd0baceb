"""What is the model learning, and when? Training-dynamics analyses, pure torch (no Lightning).

* :mod:`~xai_lightning.dynamics.frequency` — accuracy on low/high-frequency parts (Wang et al. 2019),
  first-layer kernel roughness;
* :mod:`~xai_lightning.dynamics.embeddings` — PCA (``torch.pca_lowrank``), t-SNE, silhouette,
  linear-probe accuracy;
* :mod:`~xai_lightning.dynamics.deep_knn` — deep k-NN conformity (Papernot & McDaniel 2018);
* :mod:`~xai_lightning.dynamics.margins` — margins in low/high-frequency DCT subspaces
  (Ortiz-Jiménez et al. 2020);
* :mod:`~xai_lightning.dynamics.information_plane` — decoder bounds on I(x;h), I(y;h)
  (Darlow & Storkey 2020);
* :mod:`~xai_lightning.dynamics.features` — flat per-example features of named layers.
"""

from xai_lightning.dynamics.deep_knn import (
    DEFAULT_K,
    credibility,
    deep_knn_conformity,
    knn_conformity,
    neighbour_label_counts,
    nonconformity,
)
from xai_lightning.dynamics.embeddings import (
    PCAResult,
    check_tsne_points,
    linear_probe_accuracy,
    pca,
    silhouette_score,
    tsne,
    tsne_min_points,
)
from xai_lightning.dynamics.features import (
    PENULTIMATE,
    FeatureSite,
    flatten_features,
    layer_features,
    modules_in_run_order,
    resolve_feature_sites,
)
from xai_lightning.dynamics.frequency import (
    FrequencyAccuracy,
    FrequencyVariantCache,
    check_radii,
    conv_weight,
    first_conv_layer,
    frequency_accuracy,
    frequency_split,
    frequency_variants,
    kernel_roughness,
    largest_radius,
    low_pass,
    radial_mask,
)
from xai_lightning.dynamics.information_plane import (
    InformationPlane,
    LayerDecoders,
    entropy_bits,
    gaussian_nll_bits,
    image_targets,
)
from xai_lightning.dynamics.margins import (
    DCTSubspace,
    MarginResult,
    Subspace,
    dct_matrix,
    margins_in_subspaces,
    subspace_margins,
)

__all__ = [
    "DEFAULT_K",
    "PENULTIMATE",
    "DCTSubspace",
    "FeatureSite",
    "FrequencyAccuracy",
    "FrequencyVariantCache",
    "InformationPlane",
    "LayerDecoders",
    "MarginResult",
    "PCAResult",
    "Subspace",
    "check_radii",
    "check_tsne_points",
    "conv_weight",
    "credibility",
    "dct_matrix",
    "deep_knn_conformity",
    "entropy_bits",
    "first_conv_layer",
    "flatten_features",
    "frequency_accuracy",
    "frequency_split",
    "frequency_variants",
    "gaussian_nll_bits",
    "image_targets",
    "kernel_roughness",
    "knn_conformity",
    "largest_radius",
    "layer_features",
    "linear_probe_accuracy",
    "low_pass",
    "margins_in_subspaces",
    "modules_in_run_order",
    "neighbour_label_counts",
    "nonconformity",
    "pca",
    "radial_mask",
    "resolve_feature_sites",
    "silhouette_score",
    "subspace_margins",
    "tsne",
    "tsne_min_points",
]
