"""Input × Gradient (Shrikumar et al., "Not Just a Black Box: Learning Important Features Through
Propagating Activation Differences", 2016): ``x ⊙ ∂y_c/∂x``.

For a linear model ``y = w·x + b`` it is exactly each feature's contribution ``w_i x_i``; for
piecewise-linear networks with zero biases it equals DeepLIFT with a zero baseline.
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["InputXGradient"]


class InputXGradient(AttributionMethod):
    """``x ⊙ ∂y_c/∂x`` of the class logit. Output shaped like the inputs; map: Σ_c |·| over channels."""

    name = "input_x_gradient"
    title = "Input × Gradient"

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
        gradients, _, _ = explained.input_gradients(inputs, target, labels)
        return inputs * gradients, None
