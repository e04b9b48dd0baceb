"""DeepLIFT with the rescale rule (Shrikumar, Greenside & Kundaje, "Learning Important Features
Through Propagating Activation Differences", ICML 2017).

    C_i = m_i · (x_i − x̄_i),   Σ_i C_i = f_c(x) − f_c(x̄)     (summation-to-delta)

with ``m`` the multipliers of :mod:`~xai_lightning.attribution.deeplift_rules` back-propagated
from the class logit ``f_c`` to the input, and ``x̄`` a reference input (zeros by default, as
Captum). Handles convolutions, linear layers, ReLUs and other element-wise activations, max and
average pooling, BatchNorm in eval mode and residual additions — every piece of our reference
networks (SmallCNN, CifarResNet). The input and its reference run in one forward pass, so a
slice holds ``max_batch // 2`` examples (fewer on a CPU: see ``ExplainedModel.rows_per_pass``).
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.baselines import BaselineSpec, make_baseline
from xai_lightning.attribution.deeplift_rules import apply_rescale_rule
from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec, batch_slices, class_scores

__all__ = ["DeepLift", "deeplift_contributions"]


def deeplift_contributions(
    explained: ExplainedModel,
    guard: ObserverGuard,
    inputs: torch.Tensor,
    references: torch.Tensor,
    targets: torch.Tensor,
    eps: float = 1e-10,
    multiply_by_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(contributions shaped like inputs, delta (B,))`` against one reference per input row.

    ``delta = Σ C − (f_c(x) − f_c(x̄))`` comes from the same forward pass at no extra cost.
    """
    apply_rescale_rule(guard, explained.model, eps)
    # Each pass holds the rows and their references: half of the rows per pass (max_batch, and the
    # CPU's cache-friendly pass size, see ExplainedModel.rows_per_pass).
    per_pass = explained.rows_per_pass(inputs[:1]) if inputs.shape[0] else None
    cap = None if per_pass is None else max(1, per_pass // 2)
    contributions, deltas = [], []
    for rows in batch_slices(inputs.shape[0], cap):
        x = inputs[rows].detach().requires_grad_(True)
        reference = references[rows].detach()
        logits = explained.fast_logits(torch.cat([x, reference]))
        count = x.shape[0]
        scores = class_scores(logits, targets[rows].repeat(2))
        # Both halves carry the gradient (as in Captum): the max-pool rule needs the reference
        # half's incoming multipliers too.
        (multipliers,) = torch.autograd.grad(scores.sum(), x)
        difference = x.detach() - reference
        contribution = multipliers * difference if multiply_by_inputs else multipliers
        contributions.append(contribution)
        output_delta = (scores[:count] - scores[count:]).detach().float()
        deltas.append((multipliers * difference).flatten(1).sum(1).float() - output_delta)
    return torch.cat(contributions), torch.cat(deltas)


class DeepLift(AttributionMethod):
    """DeepLIFT (rescale rule) contributions, shaped like the inputs; map: Σ over channels of ``|·|``.

    Args:
        baseline: the reference ``x̄`` — ``"zero"`` (default), ``"blur"``, ``"uniform"``, ``"mean"``, a
            number or a tensor (:mod:`~xai_lightning.attribution.baselines`).
        blur_sigma: width of the ``"blur"`` reference in pixels.
        multiply_by_inputs: False returns the multipliers ``m`` instead of ``m · (x − x̄)``.
        eps: below this ``|Δx|`` the ordinary gradient replaces ``Δy/Δx`` (Captum: 1e-10).

    ``return_convergence_delta=True`` also returns ``Σ C − (f_c(x) − f_c(x̄))`` per example.
    """

    fold_batchnorm_default = False  # points near ties: see AttributionMethod.fold_batchnorm_default

    name = "deeplift"
    title = "DeepLIFT"
    has_convergence_delta = True

    def __init__(
        self,
        baseline: BaselineSpec = "zero",
        blur_sigma: float | None = None,
        multiply_by_inputs: bool = True,
        eps: float = 1e-10,
        **common,
    ) -> None:
        super().__init__(**common)
        self.baseline = baseline
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
        references = make_baseline(self.baseline, inputs, blur_sigma=self.blur_sigma)
        return deeplift_contributions(explained, guard, inputs, references, targets, self.eps, self.multiply_by_inputs)
