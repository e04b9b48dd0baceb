"""GradientSHAP / expected gradients (Lundberg & Lee, NeurIPS 2017; Erion et al., "Improving performance
of deep learning models with axiomatic attribution priors and expected gradients", 2021).

Integrated Gradients averaged over a distribution of baselines, with the path integral replaced
by sampling a random point on each path:

    φ(x) = E_{x̄ ~ D, α ~ U(0,1), ε ~ N(0, σ²)} [ (x + ε − x̄) ⊙ ∂f_c(x̄ + α (x + ε − x̄)) / ∂x ]

estimated with ``n_samples`` draws per example. In expectation ``Σ φ ≈ f_c(x) − E f_c(x̄)``.

Draws: one set of (baseline index, α, ε) per sample, shared by the examples of the batch, so an
example's attribution does not depend on its batch-mates. Pass ``baseline_indices``, ``alphas``
and ``noise`` to use given draws (e.g. to reproduce Captum's ``GradientShap``, which draws them
per example with NumPy and torch).
"""

from __future__ import annotations

import torch

from xai_lightning.attribution.baselines import BaselineSpec, baseline_distribution
from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["GradientShap"]


def _per_example(values: torch.Tensor | None, batch: int, n: int, name: str, trailing: tuple[int, ...] = ()):
    if values is None:
        return None
    values = torch.as_tensor(values).detach().clone()
    if tuple(values.shape) == (n, *trailing):
        return values.unsqueeze(0).expand(batch, *values.shape)
    if tuple(values.shape) == (batch, n, *trailing):
        return values
    raise ValueError(
        f"GradientSHAP {name} of shape {tuple(values.shape)} does not fit {batch} examples × n_samples={n}: give "
        f"{(n, *trailing)} or {(batch, n, *trailing)}."
    )


class GradientShap(AttributionMethod):
    """Expected gradients over a baseline distribution; shaped like the inputs; map: Σ over channels of ``|·|``.

    Args:
        baselines: the distribution — a tensor ``(N, *x.shape[1:])`` (e.g. training images),
            ``(B, N, ...)`` per example, or a kind (``"uniform"`` default, ``"blur"``, ``"zero"``), see
            :func:`~xai_lightning.attribution.baselines.baseline_distribution`.
        num_baselines: N for the kinds (10).
        n_samples: random (baseline, α, noise) draws per example (50).
        stdev: σ of Gaussian noise added to the input (0, as Captum's default).
        baseline_indices, alphas, noise: explicit draws, ``(n,)``/``(B, n)``, ``(n,)``/``(B, n)`` and
            ``(n, ...)``/``(B, n, ...)``.

    ``return_convergence_delta=True`` returns ``Σ φ − (f_c(x) − mean over the drawn baselines of f_c)``.
    """

    fold_batchnorm_default = False  # points near ties: see AttributionMethod.fold_batchnorm_default

    name = "gradient_shap"
    title = "GradientSHAP"
    has_convergence_delta = True
    stochastic = True

    def __init__(
        self,
        baselines: BaselineSpec = "uniform",
        num_baselines: int = 10,
        n_samples: int = 50,
        stdev: float = 0.0,
        blur_sigma: float | None = None,
        multiply_by_inputs: bool = True,
        baseline_indices: torch.Tensor | None = None,
        alphas: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        **common,
    ) -> None:
        super().__init__(**common)
        if n_samples < 1 or num_baselines < 1:
            raise ValueError(f"n_samples and num_baselines must be >= 1; got {n_samples}, {num_baselines}")
        if stdev < 0:
            raise ValueError(f"stdev must be >= 0; got {stdev}")
        self.baselines = baselines
        self.num_baselines = num_baselines
        self.n_samples = n_samples
        self.stdev = stdev
        self.blur_sigma = blur_sigma
        self.multiply_by_inputs = multiply_by_inputs
        self.baseline_indices = baseline_indices
        self.alphas = alphas
        self.noise = noise

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        batch, n, shape = inputs.shape[0], self.n_samples, tuple(inputs.shape[1:])
        device, dtype = inputs.device, inputs.dtype
        targets, _ = explained.resolve(inputs, target, labels)
        distribution = baseline_distribution(self.baselines, inputs, self.num_baselines, blur_sigma=self.blur_sigma)
        available = distribution.shape[1]
        indices = _per_example(self.baseline_indices, batch, n, "baseline_indices")
        if indices is None:
            indices = torch.randint(0, available, (n,)).unsqueeze(0).expand(batch, n)
        indices = indices.long().to(device)
        if indices.numel() and (indices.min() < 0 or indices.max() >= available):
            raise ValueError(
                f"baseline_indices must lie in 0..{available - 1} (the distribution has {available} baselines)"
            )
        alphas = _per_example(self.alphas, batch, n, "alphas")
        if alphas is None:
            alphas = torch.rand(n, dtype=torch.float32).unsqueeze(0).expand(batch, n)
        alphas = alphas.to(device, dtype)
        noise = _per_example(self.noise, batch, n, "noise", shape)
        if noise is None:
            noise = self.stdev * torch.randn((n, *shape), dtype=torch.float32).unsqueeze(0).expand(batch, n, *shape)
        noise = noise.to(device, dtype)

        flat_alphas = alphas.reshape(-1)
        example_of_row = torch.arange(batch, device=device).repeat_interleave(n)
        chosen = distribution[example_of_row, indices.reshape(-1)]  # (B·n, ...) input-major
        noisy = inputs[example_of_row] + noise.reshape(batch * n, *shape)
        ones = (1,) * len(shape)

        def path_points(rows: slice) -> torch.Tensor:
            alpha = flat_alphas[rows].view(-1, *ones)
            return alpha * noisy[rows] + (1.0 - alpha) * chosen[rows]

        attribution = torch.zeros((batch * n, *shape), device=device, dtype=dtype)
        for rows, gradient, _ in explained.gradients(batch * n, path_points, targets.repeat_interleave(n)):
            attribution[rows] = (noisy[rows] - chosen[rows]) * gradient if self.multiply_by_inputs else gradient
        result = attribution.view(batch, n, *shape).mean(dim=1)
        delta = None
        if explained.want_delta:
            ends = torch.cat([inputs, chosen])
            row_targets = torch.cat([targets, targets.repeat_interleave(n)])
            scores = explained.scores(ends.shape[0], lambda rows: ends[rows], row_targets, "logit")
            expected_baseline = scores[batch:].view(batch, n).mean(dim=1)
            summed = attribution if self.multiply_by_inputs else attribution * (noisy - chosen)
            delta = summed.view(batch, n, -1).sum(2).mean(1).float() - (scores[:batch] - expected_baseline)
        return result, delta
