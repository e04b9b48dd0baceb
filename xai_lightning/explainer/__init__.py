"""Explainer networks (Zhang et al. 2018) and knowledge consistency (Liang et al. 2019).

Pure torch, no Lightning: an explainer network disentangles a performer's conv features into
object-part filters (interpretable track trained with the filter loss of interpretable CNNs,
ordinary track, learned mix ``p``) and reconstructs the performer's upper-layer features; location
instability measures how consistently filters fire on the same part; knowledge consistency
measures how much of one network's layer features another network's features explain, per order
of non-linearity. :class:`xai_lightning.ExplainerNetworkCallback` trains an explainer alongside a
training performer.
"""

from xai_lightning.explainer.consistency import (
    ConsistencyNetwork,
    KnowledgeConsistency,
    fit_knowledge_consistency,
    knowledge_consistency,
)
from xai_lightning.explainer.evaluation import (
    ExplainerEvaluation,
    evaluate_explainer,
    explainer_outputs,
    summarise_explainer_outputs,
)
from xai_lightning.explainer.explainer_fitting import ExplainerFit, fit_explainer
from xai_lightning.explainer.explainer_network import (
    ExplainerLoss,
    ExplainerNetwork,
    ExplainerOutput,
    relative_squared_error,
)
from xai_lightning.explainer.filter_locations import LocationInstability, filter_peaks, location_instability
from xai_lightning.explainer.filter_templates import (
    filter_loss,
    mask_to_peak,
    mutual_information,
    part_templates,
    template_entropy,
    template_log_priors,
    template_shape,
)
from xai_lightning.explainer.layer_outputs import LayerOutput, layer_features, layer_outputs_in_order
from xai_lightning.explainer.layer_substitution import forward_with_layer_output

__all__ = [
    "ConsistencyNetwork",
    "ExplainerEvaluation",
    "ExplainerFit",
    "ExplainerLoss",
    "ExplainerNetwork",
    "ExplainerOutput",
    "KnowledgeConsistency",
    "LayerOutput",
    "LocationInstability",
    "evaluate_explainer",
    "explainer_outputs",
    "filter_loss",
    "filter_peaks",
    "fit_explainer",
    "fit_knowledge_consistency",
    "forward_with_layer_output",
    "knowledge_consistency",
    "layer_features",
    "layer_outputs_in_order",
    "location_instability",
    "mask_to_peak",
    "mutual_information",
    "part_templates",
    "relative_squared_error",
    "summarise_explainer_outputs",
    "template_entropy",
    "template_log_priors",
    "template_shape",
]
