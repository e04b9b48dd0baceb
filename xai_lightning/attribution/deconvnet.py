"""Deconvnet (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014).

Zeiler and Fergus project a class signal back to pixel space through "deconvolution": transposed
convolutions, unpooling with the forward switches, and a ReLU applied to the *backward* signal.
For ReLU networks this equals the gradient in which every ReLU passes back ``max(g, 0)``
regardless of the sign of its forward input (Springenberg et al. 2015, section 3.4); max-pool
switches are the ordinary max-pool gradient.
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.relu_backward_rules import apply_relu_rule
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["Deconvnet"]


class Deconvnet(AttributionMethod):
    """Deconvnet signal in input space, shaped like the inputs; map: Σ over channels of ``|·|``.

    Needs ``nn.ReLU`` modules. Matches Captum's ``Deconvolution``.
    """

    name = "deconvnet"
    title = "Deconvnet"

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
        apply_relu_rule(guard, explained.model, "deconvnet")
        gradients, _, _ = explained.input_gradients(inputs, target, labels)
        return gradients, None
