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
    LayerSpec,
    auto_layer,
    embedding_layer,
    get_layer,
    layer_names,
    normalize_layer_name,
    parse_layer,
    resolve_layer_specs,
    resolve_layers,
    special_tokens,
    unwrap_model,
)
from xai_lightning.core.reshape import TokenGrid, get_reshape, register_reshape
from xai_lightning.core.targets import (
    TargetSpec,
    check_target,
    class_scores,
    output_scores,
    resolve_targets,
    select_logits,
    split_target,
)

__all__ = [
    "AUTO",
    "BatchTargets",
    "LayerCapture",
    "LayerNotFoundError",
    "LayerSpec",
    "ObserverGuard",
    "TargetSpec",
    "TokenGrid",
    "auto_layer",
    "batch_slices",
    "check_target",
    "class_scores",
    "embedding_layer",
    "get_layer",
    "get_reshape",
    "isolated_rng",
    "layer_names",
    "map_batched",
    "normalize_layer_name",
    "observe",
    "output_scores",
    "parse_layer",
    "register_reshape",
    "resolve_layer_specs",
    "resolve_layers",
    "resolve_targets",
    "select_logits",
    "special_tokens",
    "split_target",
    "unwrap_model",
]
