"""Guided backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for Simplicity: The
All Convolutional Net", ICLR workshop 2015).

The gradient of the class logit with respect to the input, where every ReLU passes back only
positive gradient, and only where its forward input was positive
(:mod:`~xai_lightning.attribution.relu_backward_rules`). Sharp, image-like maps; Adebayo et al.
(2018) showed they change little when the top layers are randomised.
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.relu_backward_rules import apply_relu_rule
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["GuidedBackprop"]


class GuidedBackprop(AttributionMethod):
    """Guided-backprop gradients, shaped like the inputs; map: Σ over channels of ``|·|``.

    Needs ``nn.ReLU`` modules (an error says so otherwise). Matches Captum's ``GuidedBackprop``.
    """

    name = "guided_backprop"
    title = "Guided Backprop"

    def __init__(self, **common) -> None:
        super().__init__(**common)

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        apply_relu_rule(guard, explained.model, "guided")
        gradients, _, _ = explained.input_gradients(inputs, target, labels)
        return gradients, None
