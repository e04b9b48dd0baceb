"""Grad-CAM++ (Chattopadhay, Sarkar, Howlader & Balasubramanian, "Grad-CAM++: Generalized
Gradient-based Visual Explanations for Deep Convolutional Networks", WACV 2018).

Channel weights from higher-order terms of ``Y = exp(y_c)``. For a network piecewise linear in
``A`` the second and third derivatives of ``Y`` are ``exp(y_c)·g²`` and ``exp(y_c)·g³`` with
``g = ∂y_c/∂A``, so (the common factor ``exp(y_c)`` cancelling in α and dropping out of the
normalised map)

    α^k_ij = g²_kij / (2 g²_kij + Σ_ab A^k_ab · g³_kij)         (0 where g = 0)
    w_k    = Σ_ij α^k_ij · ReLU(g_kij)
    M_c    = ReLU(Σ_k w_k A^k)                                   (B, h, w), bilinearly upsampled
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.layer_gradients import layer_slices, resolve_layer, spatial_size, upsample_maps
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["GradCAMPlusPlus", "grad_cam_plus_plus_weights"]


def grad_cam_plus_plus_weights(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` channel weights ``w_k`` of Grad-CAM++ from ``A`` and ``∂y_c/∂A`` ``(B, K, h, w)``.

    Computed in float64. Where the denominator vanishes (``g = 0``) α is 0; no additive epsilon
    (an ``eps`` of 1e-7, as some implementations add, is of the order of ``g²`` for small
    gradients and visibly biases α).
    """
    g = gradient.double()
    g2, g3 = g.square(), g.pow(3)
    total = activation.double().sum(dim=(2, 3), keepdim=True)
    denominator = 2 * g2 + total * g3
    nonzero = denominator != 0
    alpha = torch.where(nonzero, g2 / torch.where(nonzero, denominator, torch.ones_like(denominator)), 0.0)
    return (alpha * g.clamp_min(0)).sum(dim=(2, 3)).float()


class GradCAMPlusPlus(AttributionMethod):
    """Grad-CAM++ maps at ``layer``, ``(B, H, W)`` non-negative.

    Args:
        layer: dotted module name or ``"auto"``.
        upsample: bilinear upsampling to the input size.
        reshape: fold transformer tokens into a grid (e.g. ``"vit"``) when ``layer`` names no reshape.
    """

    name = "gradcam_plus_plus"
    title = "Grad-CAM++"
    image_only = True
    map_reduction = "none"

    def __init__(self, layer: str = "auto", upsample: bool = True, reshape: str | None = None, **common) -> None:
        super().__init__(**common)
        self.reshape = reshape
        self.layer = layer
        self.upsample = upsample

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        layer = resolve_layer(explained, inputs, self.layer, "Grad-CAM++", self.reshape)
        maps = []
        for part in layer_slices(explained, inputs, target, labels, layer, method="Grad-CAM++"):
            assert part.gradient is not None  # layer_slices computes it (gradients=True)
            weights = grad_cam_plus_plus_weights(part.activation, part.gradient)
            maps.append(torch.einsum("bk,bkhw->bhw", weights, part.activation.float()).clamp_min(0))
        result = torch.cat(maps)
        if self.upsample:
            result = upsample_maps(result, spatial_size(inputs))
        return result, None
