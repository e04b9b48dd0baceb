"""Guided Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017, section 3.1).

The element-wise product of the Grad-CAM map, upsampled to the input resolution, with guided
backpropagation: class-discriminative (from Grad-CAM) and high-resolution (from guided backprop).

One forward pass serves both: the ReLUs carry a switchable backward rule, ordinary for the
Grad-CAM gradient at the layer and guided for the gradient at the input
(:class:`~xai_lightning.attribution.relu_backward_rules.ReLURuleSwitch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.layer_gradients import resolve_layer, spatial_size, upsample_maps
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.relu_backward_rules import apply_relu_rule
from xai_lightning.core import BatchTargets, LayerCapture, ObserverGuard, TargetSpec, class_scores

__all__ = ["GuidedGradCAM"]


class GuidedGradCAM(AttributionMethod):
    """``upsample(Grad-CAM) ⊙ guided backprop``, shaped like the inputs ``(B, C, H, W)``.

    Args:
        layer: Grad-CAM layer (dotted module name or ``"auto"``).
        interpolate_mode: ``"bilinear"`` (default, the paper's upsampling) or ``"nearest"``
            (Captum's ``GuidedGradCam`` default).
        reshape: fold transformer tokens into a grid (e.g. ``"vit"``) when ``layer`` names no reshape.
    """

    name = "guided_gradcam"
    title = "Guided Grad-CAM"
    image_only = True

    def __init__(
        self, layer: str = "auto", interpolate_mode: str = "bilinear", reshape: str | None = None, **common
    ) -> None:
        super().__init__(**common)
        self.reshape = reshape
        if interpolate_mode not in ("bilinear", "nearest", "bicubic", "area"):
            raise ValueError(
                f"interpolate_mode must be 'bilinear', 'nearest', 'bicubic' or 'area'; got {interpolate_mode!r}"
            )
        self.layer = layer
        self.interpolate_mode = interpolate_mode

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        layer = resolve_layer(explained, inputs, self.layer, "Guided Grad-CAM", self.reshape)
        switch = apply_relu_rule(guard, explained.model, "gradient")
        parts = []
        slice_targets = BatchTargets(target, labels, inputs.shape[0])
        for rows in explained.slices(inputs.shape[0]):
            x = inputs[rows].detach().requires_grad_(True)
            switch.rule = "gradient"
            with LayerCapture(explained.model, layer) as capture:
                logits = explained.fast_logits(x)
            activation = capture.activations[layer]
            if activation.dim() != 4:
                raise ValueError(
                    f"Guided Grad-CAM needs a layer with (B, C, h, w) feature maps; {layer!r} outputs "
                    f"{tuple(activation.shape)}."
                )
            targets = slice_targets(rows, logits)
            score = class_scores(logits, targets).sum()
            (layer_gradient,) = capture.gradients_of(score, [layer], retain_graph=True)
            weights = layer_gradient.float().mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * activation.detach().float()).sum(dim=1))
            switch.rule = "guided"
            (guided,) = torch.autograd.grad(score, x)
            upsampled = upsample_maps(cam, spatial_size(inputs), self.interpolate_mode)
            parts.append(guided * upsampled.unsqueeze(1).to(guided.dtype))
        return torch.cat(parts), None
