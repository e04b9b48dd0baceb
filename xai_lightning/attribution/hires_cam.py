"""HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", 2020).

Grad-CAM averages each channel's gradient before weighting; HiResCAM keeps it element-wise:

    M_c = ReLU(Σ_k ∂y_c/∂A^k ⊙ A^k)        (B, h, w), bilinearly upsampled

For a network whose head is ``conv → flatten → linear`` the map sums exactly to the class score
minus the bias, which Grad-CAM's does not.
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.layer_gradients import layer_slices, resolve_layer, spatial_size, upsample_maps
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["HiResCAM"]


class HiResCAM(AttributionMethod):
    """``ReLU(Σ_k ∂y_c/∂A^k ⊙ A^k)`` at ``layer``, upsampled to ``(B, H, W)``.

    Args:
        layer: dotted module name or ``"auto"`` (the last module with a spatial 4-D output).
        relu: apply the ReLU (default, as the paper).
        upsample: bilinear upsampling to the input size.
        reshape: fold transformer tokens into a grid (e.g. ``"vit"``) when ``layer`` names no reshape.
    """

    name = "hirescam"
    title = "HiResCAM"
    image_only = True
    map_reduction = "none"

    def __init__(
        self, layer: str = "auto", relu: bool = True, upsample: bool = True, reshape: str | None = None, **common
    ) -> None:
        super().__init__(**common)
        self.reshape = reshape
        self.layer = layer
        self.relu = relu
        self.upsample = upsample

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        layer = resolve_layer(explained, inputs, self.layer, "HiResCAM", self.reshape)
        maps = []
        for part in layer_slices(explained, inputs, target, labels, layer, method="HiResCAM"):
            assert part.gradient is not None  # layer_slices computes it (gradients=True)
            cam = (part.gradient.float() * part.activation.float()).sum(dim=1)
            maps.append(cam.clamp_min(0) if self.relu else cam)
        result = torch.cat(maps)
        if self.upsample:
            result = upsample_maps(result, spatial_size(inputs))
        return result, None
