"""A layer's activations and the gradient of the class logit with respect to them, slice by slice.

The class-activation-map family (CAM, Grad-CAM, Grad-CAM++, HiResCAM, Score-CAM, Guided
Grad-CAM) weighs the feature maps ``A ∈ (B, K, h, w)`` of one layer; they differ only in the
weights. This module resolves the layer (a dotted name or spec — ``"blocks.3.norm1:input@vit"``
folds a transformer's tokens to its patch grid — or ``"auto"``: the last module with a spatial
4-D output, or a ViT's last residual stream), captures ``A`` (and ``∂y_c/∂A``) during forward
passes of at most ``max_batch`` inputs, and upsamples maps to the input resolution.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.core import BatchTargets, LayerCapture, TargetSpec, class_scores, resolve_layer_specs
from xai_lightning.core.reshape import Reshape

__all__ = ["LayerSlice", "layer_slices", "resolve_layer", "spatial_size", "upsample_maps"]


@dataclass
class LayerSlice:
    """One slice of the batch: ``activation (b, K, h, w)``, its ``gradient`` (or None), logits and targets."""

    rows: slice
    inputs: torch.Tensor
    activation: torch.Tensor
    gradient: torch.Tensor | None
    logits: torch.Tensor
    targets: torch.Tensor


def resolve_layer(
    explained: ExplainedModel, inputs: torch.Tensor, layer: str, method: str, reshape: str | Reshape | None = None
) -> str:
    """The spec key of ``layer`` (``"auto"`` resolved with a forward pass on one input); ``reshape``
    applies when the layer names none."""
    one = inputs[:1].detach()
    (spec,) = resolve_layer_specs(explained.model, layer, lambda: explained.model(one), reshape, sample=one)
    return spec.key


def layer_slices(
    explained: ExplainedModel,
    inputs: torch.Tensor,
    target: TargetSpec,
    labels: torch.Tensor | None,
    layer: str,
    gradients: bool = True,
    method: str = "this method",
) -> Iterator[LayerSlice]:
    """Forward slices of ``inputs`` capturing ``layer``; with ``gradients`` also ``∂y_c/∂A``.

    Raises:
        ValueError: when the layer's output is not ``(b, K, h, w)``.
    """
    slice_targets = BatchTargets(target, labels, inputs.shape[0])
    for rows in explained.slices(inputs.shape[0]):
        x = inputs[rows].detach()
        # Without gradients the whole pass runs unrecorded; with them, from the layer on only.
        with (
            torch.set_grad_enabled(gradients),
            LayerCapture(explained.model, layer, graph_from_layers=gradients) as capture,
        ):
            logits = explained.fast_logits(x)
        activation = capture.activations[layer]
        if activation.dim() != 4:
            raise ValueError(
                f"{method} needs a layer with (B, C, h, w) feature maps; {layer!r} outputs {tuple(activation.shape)}. "
                "Choose a convolutional layer or 'auto'; for transformer tokens (B, tokens, dim) add a reshape "
                f"('{layer}@vit' or reshape='vit')."
            )
        targets = slice_targets(rows, logits)
        gradient = None
        if gradients:
            (gradient,) = capture.gradients_of(class_scores(logits, targets).sum(), [layer])
        yield LayerSlice(rows, x.detach(), activation.detach(), gradient, logits.detach().float(), targets)


def spatial_size(images: torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of ``(..., H, W)`` images: the size :func:`upsample_maps` takes."""
    return images.shape[-2], images.shape[-1]


def upsample_maps(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``(B, h, w)`` → ``(B, H, W)``; bilinear with ``align_corners=False`` (as Captum and the papers)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps.unsqueeze(1), size=size, mode=mode, **kwargs).squeeze(1)
