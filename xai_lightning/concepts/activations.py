"""Layer activations and class-logit gradients for concept methods, batched under a memory cap.

Both functions capture every requested layer in *one* forward pass per slice of at most
``max_batch`` examples; :func:`logit_gradients` differentiates the target class **logit** (not
the loss, whose gradient has the opposite sign — REFERENCE.md) with respect to all layers in one
``torch.autograd.grad`` call, and can hand back the activations of the same pass (TCAV's CAV
similarity of the probe images needs no second forward). Results are flattened to
``(N, D_layer)``, the space CAVs live in. :func:`layer_activations` stops the forward pass after
the deepest requested layer; on a CPU both run on channels-last copies of the images
with eval BatchNorms folded (:class:`~xai_lightning.core.fast_forward.FastForward`).

Layers are spec keys: a transformer layer read through a reshape (``"blocks.3.norm1:input@vit"``)
is flattened from its folded grid ``(N, D, h, w)``, the same space as a CNN's feature maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xai_lightning.core import (
    BatchTargets,
    LayerCapture,
    TargetSpec,
    batch_slices,
    class_scores,
    observe,
    output_scores,
    parse_layer,
    split_target,
)
from xai_lightning.core.fast_forward import FastForward
from xai_lightning.core.layer_activations import LayerActivations

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
    """Flattened activations ``(N, D_layer)`` (float32, on the model's device) of ``images (N, C, H, W)``.

    The forward passes stop after the deepest of ``layers`` (``output_key`` is not needed).
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    forward = LayerActivations(model, list(layers))
    with observe(model, trainer=trainer) as guard, torch.no_grad():
        for rows in batch_slices(images.shape[0], max_batch):
            outputs = forward(guard.input(images[rows], requires_grad=False))
            for name, normalized in zip(layers, forward.layers):
                parts[name].append(outputs[normalized].flatten(1).float())
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
    activations: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """∂(logit of each example's target class)/∂(layer activation), once per example.

    Args:
        inputs: ``(N, C, H, W)``.
        target: class per example: an index, ``(N,)`` indices, ``"label"`` or ``"predicted"``; or a
            callable on the model output returning ``(N,)`` scores (logits are then ``(N, 1)``).
        layers: dotted layer names (already resolved).
        activations: a dict to receive layer → ``(N, D_layer)`` float32 activations of the same
            forward passes (None: not kept).

    Returns:
        ``(gradients, logits, targets)``: layer → ``(N, D_layer)`` float32 gradients, the
        ``(N, num_classes)`` logits and the ``(N,)`` classes differentiated.
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    logit_parts: list[torch.Tensor] = []
    target_parts: list[torch.Tensor] = []
    score_fn, target = split_target(target)
    slice_targets = BatchTargets(target, labels, inputs.shape[0])
    fast = FastForward(model)  # channels-last images, eval BatchNorms folded
    with observe(model, trainer=trainer) as guard:
        for rows in batch_slices(inputs.shape[0], max_batch):
            # Only gradients with respect to the layers are needed: the graph starts at the first of
            # them (also for a layer with no parameters below it).
            x = guard.input(inputs[rows], requires_grad=False)
            with LayerCapture(model, list(layers), graph_from_layers=True) as capture:
                logits = output_scores(fast(x), output_key, score_fn, batch=x.shape[0])
            targets = slice_targets(rows, logits)
            gradients = capture.gradients_of(class_scores(logits, targets).sum(), list(layers))
            outputs = capture.activations  # keyed by spec key
            for name, gradient in zip(layers, gradients):
                parts[name].append(gradient.detach().flatten(1).float())
                if activations is not None:
                    kept[name].append(outputs[parse_layer(name).key].detach().flatten(1).float())
            logit_parts.append(logits.detach().float())
            target_parts.append(targets)
    if activations is not None:
        activations.update({name: torch.cat(chunks) for name, chunks in kept.items()})
    return (
        {name: torch.cat(chunks) for name, chunks in parts.items()},
        torch.cat(logit_parts),
        torch.cat(target_parts),
    )
