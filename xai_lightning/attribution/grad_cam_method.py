"""Grad-CAM (Selvaraju et al., ICCV 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization").

For a layer with activations ``A ∈ (B, K, h, w)`` and the target class logit ``y^c``:

    α_k^c = mean_ij ∂y^c / ∂A^k_ij          (global-average-pooled gradients)
    L^c   = ReLU(Σ_k α_k^c A^k)              (B, h, w)

then bilinearly upsampled (``align_corners=False``) to the input resolution. The gradient is
that of the class *logit*, not of the softmax or the loss (REFERENCE.md). Several layers are
explained from the same forward pass and a single ``torch.autograd.grad`` call.

Transformers: a layer spec with a reshape (``"blocks.3.norm1:input@vit"``, or ``reshape="vit"``)
folds the tokens ``(B, 1 + N, D)`` into ``A ∈ (B, D, h, w)`` (CLS dropped, ``N = h·w`` patches), and
the same formula runs on the patch grid; ``"auto"`` on a ViT picks the input of the last block's
first LayerNorm (see :func:`~xai_lightning.core.auto_layer`).
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
    resolve_layer_specs,
    split_target,
)
from xai_lightning.core.layers import LayerSpecLike
from xai_lightning.core.reshape import Reshape

__all__ = ["GradCAM", "GradCAMResult", "grad_cam"]


@dataclass(frozen=True)
class GradCAMResult:
    """Grad-CAM maps for one batch.

    Attributes:
        maps: layer key → ``(B, H, W)`` maps (input resolution unless ``upsample=False``, then the
            layer's ``(B, h, w)``); non-negative when ``relu=True``. float32, or float64 for a
            float64 model (half-precision activations are summed in float32).
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
    layers: LayerSpecLike | Sequence[LayerSpecLike] = "auto",
    *,
    labels: torch.Tensor | None = None,
    output_key: str | int | None = None,
    relu: bool = True,
    upsample: bool = True,
    max_batch: int | None = None,
    trainer: Any | None = None,
    reshape: str | Reshape | None = None,
) -> GradCAMResult:
    """Grad-CAM of ``model`` on ``inputs (B, C, H, W)`` for one or several layers.

    Args:
        target: class to explain per example (``"label"`` needs ``labels``), or a callable on the
            model output returning ``(B,)`` scores.
        layers: dotted module name(s) or layer specs (``"blocks.3.norm1:input@vit"``), or ``"auto"``
            (last module with a spatial 4-D output; for a ViT, the last block's residual stream).
        relu: apply the ReLU of the paper (off gives the signed map, as Captum's default).
        upsample: bilinear upsampling to ``(H, W)``.
        max_batch: largest number of examples per forward/backward pass.
        trainer: a Lightning trainer, for its precision context (optional).
        reshape: fold every layer without its own reshape, e.g. ``"vit"`` for transformer blocks.
    """
    if inputs.dim() != 4:
        raise ValueError(f"Grad-CAM explains images (B, C, H, W); got inputs of shape {tuple(inputs.shape)}")
    maps: dict[str, list[torch.Tensor]] = {}
    logits_parts: list[torch.Tensor] = []
    target_parts: list[torch.Tensor] = []
    score_fn, target = split_target(target)
    with observe(model, trainer=trainer) as guard:
        one = inputs[:1]
        specs = resolve_layer_specs(
            model, layers, lambda: model(guard.input(one, requires_grad=False)), reshape, sample=one
        )
        names = [spec.key for spec in specs]
        maps = {name: [] for name in names}
        explained = ExplainedModel(model, output_key, max_batch, score_fn=score_fn, like=inputs)
        slice_targets = BatchTargets(target, labels, inputs.shape[0])
        for rows in explained.slices(inputs.shape[0]):
            # Only gradients with respect to the layers are needed: the graph starts at the first
            # of them (also in a frozen network, whose parameters do not require gradients).
            x = guard.input(inputs[rows], requires_grad=False)
            with LayerCapture(model, specs, graph_from_layers=True) as capture:
                logits = explained.fast_logits(x)
            targets = slice_targets(rows, logits)
            activations = [capture.activations[name] for name in names]
            gradients = capture.gradients_of(class_scores(logits, targets).sum(), names)
            for name, activation, gradient in zip(names, activations, gradients):
                if activation.dim() != 4:
                    raise ValueError(
                        f"Grad-CAM needs a layer with (B, C, h, w) output; {name!r} gives {tuple(activation.shape)}. "
                        "For transformer tokens (B, tokens, dim) add a reshape: f'{name}@vit' or reshape='vit'."
                    )
                # float32 at least (bfloat16/float16 sums lose the map), float64 models stay float64.
                dtype = torch.promote_types(activation.dtype, torch.float32)
                weights = gradient.to(dtype).mean(dim=(2, 3), keepdim=True)
                cam = (weights * activation.to(dtype)).sum(dim=1, keepdim=True)
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
        maps = GradCAM(layer="blocks.3.norm1:input", reshape="vit").attribute(vit, images)  # a ViT

    ``reshape`` folds transformer tokens into a grid when ``layer`` names no reshape itself.
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
        reshape: str | None = None,
    ) -> None:
        super().__init__(output_key=output_key, max_batch=max_batch, seed=seed)
        self.layer = layer
        self.relu = relu
        self.upsample = upsample
        self.reshape = reshape

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        result = grad_cam(
            explained.model,
            inputs,
            target if explained.score_fn is None else explained.score_fn,
            self.layer,
            labels=labels,
            output_key=explained.output_key,
            relu=self.relu,
            upsample=self.upsample,
            max_batch=explained.max_batch,
            reshape=self.reshape,
        )
        return next(iter(result.maps.values())), None
