"""Saliency maps (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image
Classification Models and Saliency Maps", ICLR workshop 2014).

The attribution is the gradient of the class *logit* with respect to the input, ``∂y_c/∂x``; by
default its absolute value (as Captum's ``Saliency(abs=True)``). The heatmap of an image is the
maximum over colour channels of ``|∂y_c/∂x|`` (the paper's definition).
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["Saliency"]


class Saliency(AttributionMethod):
    """``|∂y_c/∂x|`` (or the signed gradient with ``abs=False``), shaped like the inputs.

    Output: ``(B, C, H, W)`` for images, ``(B, D)`` for features. Map: max over channels.
    One forward and one backward pass per ``max_batch`` slice.
    """

    name = "saliency"
    title = "Saliency"
    map_reduction = "abs_max"

    def __init__(self, abs: bool = True, **common) -> None:  # noqa: A002 - Captum's argument name
        super().__init__(**common)
        self.abs = abs

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        gradients, _, _ = explained.input_gradients(inputs, target, labels)
        return (gradients.abs() if self.abs else gradients), None
