"""Grad-CAM (Selvaraju et al., ICCV 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization").

For a layer with activations ``A ∈ (B, K, h, w)`` and the target class logit ``y^c``:

    α_k^c = mean_ij ∂y^c / ∂A^k_ij          (global-average-pooled gradients)
    L^c   = ReLU(Σ_k α_k^c A^k)              (B, h, w)

then bilinearly upsampled (``align_corners=False``) to the input resolution. The gradient is
that of the class *logit*, not of the softmax or the loss (REFERENCE.md). Several layers are
explained from the same forward pass and a single ``torch.autograd.grad`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import (
    BatchTargets,
    LayerCapture,
    ObserverGuard,
    TargetSpec,
    class_scores,
    observe,
    resolve_layers,
)

__all__ = ["GradCAM", "GradCAMResult", "grad_cam"]


@dataclass(frozen=True)
class GradCAMResult:
    """Grad-CAM maps for one batch.

    Attributes:
        maps: layer name → ``(B, H, W)`` float32 maps (input resolution unless ``upsample=False``,
            then the layer's ``(B, h, w)``); non-negative when ``relu=True``.
        logits: ``(B, num_classes)`` logits of the explained forward pass (detached).
        targets: ``(B,)`` the class explained for each example.
    """

    maps: dict[str, torch.Tensor]
    logits: torch.Tensor
    targets: torch.Tensor

    @property
    def probabilities(self) -> torch.Tensor:
        """``(B,)`` softmax probability of the explained class."""
        return self.logits.float().softmax(1).gather(1, self.targets.view(-1, 1)).squeeze(1)


def grad_cam(
    model: nn.Module,
    inputs: torch.Tensor,
    target: TargetSpec = "predicted",
    layers: str | Sequence[str] = "auto",
    *,
    labels: torch.Tensor | None = None,
    output_key: str | int | None = None,
    relu: bool = True,
    upsample: bool = True,
    max_batch: int | None = None,
    trainer: Any | None = None,
) -> GradCAMResult:
    """Grad-CAM of ``model`` on ``inputs (B, C, H, W)`` for one or several layers.

    Args:
        target: class to explain per example (``"label"`` needs ``labels``).
        layers: dotted module name(s) or ``"auto"`` (last module with a spatial 4-D output).
        relu: apply the ReLU of the paper (off gives the signed map, as Captum's default).
        upsample: bilinear upsampling to ``(H, W)``.
        max_batch: largest number of examples per forward/backward pass.
        trainer: a Lightning trainer, for its precision context (optional).
    """
    if inputs.dim() != 4:
        raise ValueError(f"Grad-CAM explains images (B, C, H, W); got inputs of shape {tuple(inputs.shape)}")
    maps: dict[str, list[torch.Tensor]] = {}
    logits_parts: list[torch.Tensor] = []
    target_parts: list[torch.Tensor] = []
    with observe(model, trainer=trainer) as guard:
        names = resolve_layers(model, layers, forward=lambda: model(guard.input(inputs[:1], requires_grad=False)))
        maps = {name: [] for name in names}
        explained = ExplainedModel(model, output_key, max_batch, like=inputs)
        slice_targets = BatchTargets(target, labels, inputs.shape[0])
        for rows in explained.slices(inputs.shape[0]):
            # The input's own gradient is never computed, but requiring it keeps a graph to the
            # layers of a frozen network (parameters with requires_grad=False).
            x = guard.input(inputs[rows])
            with LayerCapture(model, names) as capture:
                logits = explained.fast_logits(x)
            targets = slice_targets(rows, logits)
            activations = [capture.activations[name] for name in names]
            gradients = torch.autograd.grad(class_scores(logits, targets).sum(), activations)
            for name, activation, gradient in zip(names, activations, gradients):
                if activation.dim() != 4:
                    raise ValueError(
                        f"Grad-CAM needs a layer with (B, C, h, w) output; {name!r} gives {tuple(activation.shape)}"
                    )
                weights = gradient.float().mean(dim=(2, 3), keepdim=True)
                cam = (weights * activation.float()).sum(dim=1, keepdim=True)
                if relu:
                    cam = F.relu(cam)
                if upsample:
                    cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
                maps[name].append(cam.squeeze(1).detach())
            logits_parts.append(logits.detach().float())
            target_parts.append(targets)
    return GradCAMResult(
        maps={name: torch.cat(parts) for name, parts in maps.items()},
        logits=torch.cat(logits_parts),
        targets=torch.cat(target_parts),
    )


class GradCAM(AttributionMethod):
    """Grad-CAM as a method object (Captum style: configure once, call ``attribute`` per batch).

    Output: ``(B, H, W)`` maps (``(B, h, w)`` with ``upsample=False``), non-negative with ``relu``.

    Example::

        maps = GradCAM(layer="features.10").attribute(model, images, target=labels)   # (B, H, W)
    """

    name = "gradcam"
    title = "Grad-CAM"
    image_only = True
    map_reduction = "none"

    def __init__(
        self,
        layer: str = "auto",
        relu: bool = True,
        upsample: bool = True,
        output_key: str | int | None = None,
        max_batch: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(output_key=output_key, max_batch=max_batch, seed=seed)
        self.layer = layer
        self.relu = relu
        self.upsample = upsample

    def _attribute(self, explained: ExplainedModel, inputs: torch.Tensor, target: TargetSpec,
                   labels: torch.Tensor | None, guard: ObserverGuard):
        result = grad_cam(
            explained.model,
            inputs,
            target,
            self.layer,
            labels=labels,
            output_key=explained.output_key,
            relu=self.relu,
            upsample=self.upsample,
            max_batch=explained.max_batch,
        )
        return next(iter(result.maps.values())), None
