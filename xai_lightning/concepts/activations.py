"""Layer activations and class-logit gradients for concept methods, batched under a memory cap.

Both functions capture every requested layer in *one* forward pass per slice of at most
``max_batch`` examples; :func:`logit_gradients` differentiates the target class **logit** (not
the loss, whose gradient has the opposite sign — REFERENCE.md) with respect to all layers in one
``torch.autograd.grad`` call. Results are flattened to ``(N, D_layer)``, the space CAVs live in.

Layers are spec keys: a transformer layer read through a reshape (``"blocks.3.norm1:input@vit"``)
is flattened from its folded grid ``(N, D, h, w)``, the same space as a CNN's feature maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xai_lightning.core import (
    LayerCapture,
    TargetSpec,
    batch_slices,
    class_scores,
    observe,
    output_scores,
    resolve_targets,
    select_logits,
    split_target,
)

__all__ = ["layer_activations", "logit_gradients"]


def layer_activations(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    *,
    max_batch: int | None = None,
    output_key: str | int | None = None,
    trainer: Any | None = None,
) -> dict[str, torch.Tensor]:
    """Flattened activations ``(N, D_layer)`` (float32, on the model's device) of ``images (N, C, H, W)``."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with observe(model, trainer=trainer) as guard, torch.no_grad():
        for rows in batch_slices(images.shape[0], max_batch):
            with LayerCapture(model, list(layers)) as capture:
                select_logits(model(guard.input(images[rows], requires_grad=False)), output_key)
            activations = capture.activations
            for name in layers:
                parts[name].append(activations[name].detach().flatten(1).float())
    return {name: torch.cat(chunks) if chunks else torch.zeros(0, 0) for name, chunks in parts.items()}


def logit_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    target: TargetSpec,
    layers: Sequence[str],
    *,
    labels: torch.Tensor | None = None,
    max_batch: int | None = None,
    output_key: str | int | None = None,
    trainer: Any | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """∂(logit of each example's target class)/∂(layer activation), once per example.

    Args:
        inputs: ``(N, C, H, W)``.
        target: class per example: an index, ``(N,)`` indices, ``"label"`` or ``"predicted"``; or a
            callable on the model output returning ``(N,)`` scores (logits are then ``(N, 1)``).
        layers: dotted layer names (already resolved).

    Returns:
        ``(gradients, logits, targets)``: layer → ``(N, D_layer)`` float32 gradients, the
        ``(N, num_classes)`` logits and the ``(N,)`` classes differentiated.
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    logit_parts: list[torch.Tensor] = []
    target_parts: list[torch.Tensor] = []
    score_fn, target = split_target(target)
    with observe(model, trainer=trainer) as guard:
        for rows in batch_slices(inputs.shape[0], max_batch):
            # requires_grad on the input: a layer with no parameters below it must still be differentiable.
            x = guard.input(inputs[rows])
            with LayerCapture(model, list(layers)) as capture:
                logits = output_scores(model(x), output_key, score_fn, batch=x.shape[0])
            if isinstance(target, torch.Tensor) or isinstance(target, (list, tuple)):
                chosen: TargetSpec = torch.as_tensor(target)[rows]
            else:
                chosen = target
            targets = resolve_targets(chosen, logits, None if labels is None else labels[rows])
            gradients = capture.gradients_of(class_scores(logits, targets).sum(), list(layers))
            for name, gradient in zip(layers, gradients):
                parts[name].append(gradient.detach().flatten(1).float())
            logit_parts.append(logits.detach().float())
            target_parts.append(targets)
    return (
        {name: torch.cat(chunks) for name, chunks in parts.items()},
        torch.cat(logit_parts),
        torch.cat(target_parts),
    )
