"""Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, "Score-CAM: Score-Weighted Visual
Explanations for Convolutional Neural Networks", CVPR workshops 2020).

Gradient-free: each feature map ``A^k`` of the layer, upsampled to the input size and min–max
normalised to [0, 1], masks the input; the softmax probability of the class on the masked input
weighs the map:

    s_k = softmax(f(x ⊙ norm(up(A^k))))_c
    M_c = ReLU(Σ_k s_k · up(A^k))

as in the authors' implementation (channels whose map is constant are skipped: they carry no
spatial information). All ``B × K`` masked inputs are evaluated as one batch under ``max_batch``.
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.explained_model import ExplainedModel, ScoreKind
from xai_lightning.attribution.layer_gradients import layer_slices, resolve_layer, spatial_size, upsample_maps
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["ScoreCAM"]


class ScoreCAM(AttributionMethod):
    """Score-CAM maps at ``layer``, ``(B, H, W)`` non-negative.

    Args:
        layer: dotted module name or ``"auto"``.
        score: ``"probability"`` (default, the paper) or ``"logit"`` of the masked inputs.
        reshape: fold transformer tokens into a grid (e.g. ``"vit"``) when ``layer`` names no reshape.
    """

    name = "score_cam"
    title = "Score-CAM"
    image_only = True
    map_reduction = "none"

    def __init__(
        self, layer: str = "auto", score: ScoreKind = "probability", reshape: str | None = None, **common
    ) -> None:
        super().__init__(**common)
        self.reshape = reshape
        if score not in ("probability", "logit"):
            raise ValueError(f"score must be 'probability' or 'logit'; got {score!r}")
        self.layer = layer
        self.score = score

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        layer = resolve_layer(explained, inputs, self.layer, "Score-CAM", self.reshape)
        size = spatial_size(inputs)
        activations, target_parts = [], []
        for part in layer_slices(explained, inputs, target, labels, layer, gradients=False, method="Score-CAM"):
            activations.append(part.activation.float())
            target_parts.append(part.targets)
        activation, targets = torch.cat(activations), torch.cat(target_parts)
        batch, channels = activation.shape[:2]
        upsampled = upsample_maps(activation.flatten(0, 1), size).view(batch, channels, *size)
        low = upsampled.flatten(2).amin(2)[..., None, None]
        high = upsampled.flatten(2).amax(2)[..., None, None]
        informative = (high > low).view(batch, channels)
        masks = (upsampled - low) / (high - low).clamp_min(torch.finfo(upsampled.dtype).tiny)

        def masked_inputs(rows: slice) -> torch.Tensor:
            index = torch.arange(rows.start, rows.stop, device=inputs.device)
            example, channel = index // channels, index % channels
            return inputs[example] * masks[example, channel].unsqueeze(1).to(inputs.dtype)

        scores = explained.scores(batch * channels, masked_inputs, targets.repeat_interleave(channels), self.score)
        weights = scores.view(batch, channels) * informative
        cam = torch.einsum("bk,bkhw->bhw", weights, upsampled).clamp_min(0)
        return cam, None
