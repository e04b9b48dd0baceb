"""DeepSHAP (Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017,
section 4.2): DeepLIFT averaged over a distribution of references.

    φ_i(x) = (1/N) Σ_n C_i(x; x̄_n)

With the references drawn from the data ("background" samples, as SHAP does), this
approximates SHAP values of the class logit under feature independence; its summation property
is ``Σ_i φ_i = f_c(x) − (1/N) Σ_n f_c(x̄_n)``. All ``B × N`` input–reference pairs run as one
batch under ``max_batch`` (Captum's ``DeepLiftShap`` lays them out the same way).
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.baselines import BaselineSpec, baseline_distribution
from xai_lightning.attribution.deeplift import deeplift_contributions
from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["DeepShap"]


class DeepShap(AttributionMethod):
    """DeepLIFT averaged over references; shaped like the inputs; map: Σ over channels of ``|·|``.

    Args:
        baselines: the reference distribution — a tensor ``(N, *x.shape[1:])`` shared by all
            examples (e.g. training images), ``(B, N, ...)`` per example, or a kind:
            ``"uniform"`` (default: N noise images in each example's value range), ``"blur"``
            (N increasingly blurred copies), ``"zero"`` (see
            :func:`~xai_lightning.attribution.baselines.baseline_distribution`).
        num_baselines: N for the kinds (10).
        blur_sigma: widest blur of ``"blur"``.
        eps: as :class:`~xai_lightning.attribution.deeplift.DeepLift`.

    ``return_convergence_delta=True`` returns ``Σ φ − (f_c(x) − mean_n f_c(x̄_n))`` per example.
    """

    fold_batchnorm_default = False  # points near ties: see AttributionMethod.fold_batchnorm_default

    name = "deep_shap"
    title = "DeepSHAP"
    has_convergence_delta = True
    stochastic = True

    def __init__(
        self,
        baselines: BaselineSpec = "uniform",
        num_baselines: int = 10,
        blur_sigma: float | None = None,
        multiply_by_inputs: bool = True,
        eps: float = 1e-10,
        **common,
    ) -> None:
        super().__init__(**common)
        if num_baselines < 1:
            raise ValueError(f"num_baselines must be >= 1; got {num_baselines}")
        self.baselines = baselines
        self.num_baselines = num_baselines
        self.blur_sigma = blur_sigma
        self.multiply_by_inputs = multiply_by_inputs
        self.eps = eps

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        targets, _ = explained.resolve(inputs, target, labels)
        references = baseline_distribution(self.baselines, inputs, self.num_baselines, blur_sigma=self.blur_sigma)
        batch, count = references.shape[:2]
        expanded = inputs.repeat_interleave(count, dim=0)  # input-major: (x0 r0, x0 r1, …)
        contributions, deltas = deeplift_contributions(
            explained,
            guard,
            expanded,
            references.flatten(0, 1),
            targets.repeat_interleave(count),
            self.eps,
            self.multiply_by_inputs,
        )
        attribution = contributions.view(batch, count, *inputs.shape[1:]).mean(dim=1)
        return attribution, deltas.view(batch, count).mean(dim=1)
