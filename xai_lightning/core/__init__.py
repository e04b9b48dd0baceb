"""Observing without disturbing: the guard, layer lookup, activation capture, targets, batching.

Nothing here imports Lightning; every algorithm package builds on these pieces.
"""

from xai_lightning.core.batch_targets import BatchTargets
from xai_lightning.core.batching import batch_slices, map_batched
from xai_lightning.core.capture import LayerCapture
from xai_lightning.core.guard import ObserverGuard, isolated_rng, observe
from xai_lightning.core.layers import (
    AUTO,
    LayerNotFoundError,
    auto_layer,
    get_layer,
    layer_names,
    normalize_layer_name,
    resolve_layers,
    unwrap_model,
)
from xai_lightning.core.targets import TargetSpec, class_scores, resolve_targets, select_logits

__all__ = [
    "AUTO",
    "BatchTargets",
    "LayerCapture",
    "LayerNotFoundError",
    "ObserverGuard",
    "TargetSpec",
    "auto_layer",
    "batch_slices",
    "class_scores",
    "get_layer",
    "isolated_rng",
    "layer_names",
    "map_batched",
    "normalize_layer_name",
    "observe",
    "resolve_layers",
    "resolve_targets",
    "select_logits",
    "unwrap_model",
]
