"""Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017).

    IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂F(x' + α(x − x'))/∂x_i dα

with ``F`` the class logit and ``x'`` a baseline. The integral is a weighted sum over ``steps``
points of the straight path, by one of

* ``"gauss_legendre"`` (default, as Captum): Gauss–Legendre nodes mapped to [0, 1] — exact for
  polynomials of degree < 2·steps, so it converges fastest on smooth paths;
* ``"trapezoid"``: equally spaced α = 0, 1/(n−1), …, 1, weights 1/(n−1) with halved ends (the
  paper's Riemann sum); also ``"left"``, ``"right"``, ``"middle"`` Riemann sums.

Completeness: Σ_i IG_i = F(x) − F(x'); the difference is the *convergence delta*
(``return_convergence_delta=True``), which shrinks as ``steps`` grows. All ``B × steps`` path
points are pushed through the network as rows of ``max_batch`` at most.
"""

from __future__ import annotations

import numpy as np
import torch

from xai_lightning.attribution.baselines import BaselineSpec, make_baseline
from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["IntegratedGradients", "integration_rule", "path_integral"]

RULES = ("gauss_legendre", "trapezoid", "left", "right", "middle")
_CAPTUM_NAMES = {
    "gausslegendre": "gauss_legendre",
    "riemann_trapezoid": "trapezoid",
    "riemann_left": "left",
    "riemann_right": "right",
    "riemann_middle": "middle",
}


def integration_rule(steps: int, rule: str = "gauss_legendre") -> tuple[torch.Tensor, torch.Tensor]:
    """``(alphas (steps,), weights (steps,))`` float32 nodes and weights of ∫₀¹ f(α) dα ≈ Σ w_s f(α_s)."""
    rule = _CAPTUM_NAMES.get(rule, rule)
    if rule not in RULES:
        raise ValueError(f"Unknown integration rule {rule!r}; use one of {list(RULES)}.")
    if steps < 1 or (rule == "trapezoid" and steps < 2):
        raise ValueError(f"steps must be >= {2 if rule == 'trapezoid' else 1} for the {rule} rule; got {steps}")
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = 0.5 * (nodes + 1), 0.5 * weights
    else:
        weights = np.full(steps, 1.0 / steps)
        if rule == "trapezoid":
            # steps points span steps − 1 intervals of width 1/(steps − 1); the end points get half
            # weights, so the weights sum to 1. (Captum 0.9 uses 1/steps here, so its trapezoid
            # weights sum to (steps − 1)/steps and its IG is smaller by that factor.)
            alphas = np.linspace(0.0, 1.0, steps)
            weights = np.full(steps, 1.0 / (steps - 1))
            weights[0] /= 2
            weights[-1] /= 2
        elif rule == "left":
            alphas = np.arange(steps) / steps
        elif rule == "right":
            alphas = np.arange(1, steps + 1) / steps
        else:
            alphas = (np.arange(steps) + 0.5) / steps
    return torch.tensor(alphas, dtype=torch.float32), torch.tensor(weights, dtype=torch.float32)


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def path_integral(
    explained: ExplainedModel,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
    alphas: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """``Σ_s w_s ∂F(x' + α_s(x − x'))/∂x`` per example, shaped like ``inputs`` (not yet × (x − x')).

    Rows are ordered step-major (row ``r`` is step ``r // B`` of example ``r % B``), generated
    slice by slice, so memory stays bounded by ``max_batch``.
    """
    batch = inputs.shape[0]
    alphas = alphas.to(inputs.device, inputs.dtype)
    weights = weights.to(inputs.device, inputs.dtype)
    difference = inputs - baselines
    total = batch * alphas.numel()

    def path_points(rows: slice) -> torch.Tensor:
        index = torch.arange(rows.start, rows.stop, device=inputs.device)
        example, step = index % batch, index // batch
        return baselines[example] + _broadcast(alphas[step], inputs) * difference[example]

    accumulated = torch.zeros_like(inputs)
    for rows, gradient, _ in explained.gradients(total, path_points, targets.repeat(alphas.numel())):
        index = torch.arange(rows.start, rows.stop, device=inputs.device)
        accumulated.index_add_(0, index % batch, gradient * _broadcast(weights[index // batch], gradient))
    return accumulated


class IntegratedGradients(AttributionMethod):
    """Integrated Gradients of the class logit, shaped like the inputs; map: Σ over channels of ``|·|``.

    Args:
        steps: points on the path (paper and Captum default: 50).
        rule: ``"gauss_legendre"`` (default), ``"trapezoid"``, ``"left"``, ``"right"``, ``"middle"``
            (Captum's names ``"gausslegendre"``, ``"riemann_trapezoid"``, … are accepted too).
        baseline: ``"zero"`` (default), ``"blur"``, ``"uniform"``, ``"mean"``, a number or a tensor
            (see :mod:`~xai_lightning.attribution.baselines`).
        blur_sigma: width of the ``"blur"`` baseline in pixels (default: image side / 8).
        multiply_by_inputs: False returns the path-averaged gradient without the ``(x − x')`` factor.

    ``return_convergence_delta=True`` also returns ``Σ IG − (F(x) − F(x'))`` per example.
    """

    fold_batchnorm_default = False  # points near ties: see AttributionMethod.fold_batchnorm_default

    name = "integrated_gradients"
    title = "Integrated Gradients"
    has_convergence_delta = True

    def __init__(
        self,
        steps: int = 50,
        rule: str = "gauss_legendre",
        baseline: BaselineSpec = "zero",
        blur_sigma: float | None = None,
        multiply_by_inputs: bool = True,
        **common,
    ) -> None:
        super().__init__(**common)
        integration_rule(steps, rule)  # validate now, not at the first call
        self.steps = steps
        self.rule = rule
        self.baseline = baseline
        self.blur_sigma = blur_sigma
        self.multiply_by_inputs = multiply_by_inputs

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        targets, logits = explained.resolve(inputs, target, labels)
        baselines = make_baseline(self.baseline, inputs, blur_sigma=self.blur_sigma)
        alphas, weights = integration_rule(self.steps, self.rule)
        total = path_integral(explained, inputs, baselines, targets, alphas, weights)
        attribution = total * (inputs - baselines) if self.multiply_by_inputs else total
        delta = None
        if explained.want_delta:
            delta = convergence_delta(explained, attribution, inputs, baselines, targets)
        return attribution, delta


def convergence_delta(
    explained: ExplainedModel,
    attribution: torch.Tensor,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """``Σ attribution − (F(x) − F(x'))`` per example, ``(B,)`` — the completeness error."""
    batch = inputs.shape[0]
    ends = torch.cat([inputs, baselines])
    logits = explained.scores(2 * batch, lambda rows: ends[rows], targets.repeat(2), "logit")
    return attribution.flatten(1).sum(1).float() - (logits[:batch] - logits[batch:])
