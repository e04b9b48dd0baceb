"""Local linear surrogates over interpretable features: the machinery LIME and KernelSHAP share.

Both methods (Ribeiro et al. 2016; Lundberg & Lee 2017) explain ``f`` near an input ``x`` by

1. drawing *coalitions* ``z ∈ {0, 1}^M`` of interpretable features (superpixels or columns,
   :mod:`~xai_lightning.attribution.superpixels`);
2. evaluating ``f`` on ``h(z) = z ⊙ x + (1 − z) ⊙ x'`` (absent features take the baseline ``x'``);
3. fitting a weighted linear model ``g(z) = φ₀ + φᵀz`` to the scores, with weights from a kernel.

They differ in the coalition distribution, the kernel and the fit. Everything here is batched:
the coalitions of all ``B`` examples are evaluated as ``B × N`` rows under ``max_batch``, and the
fits of all examples are one batched linear solve (examples with fewer superpixels are padded
with inert features whose coefficient is fixed to 0).

Random draws (coalitions) are shared by the examples of a batch and made before any model
evaluation, so an example's explanation depends neither on its batch neighbours nor on
``max_batch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xai_lightning.attribution.baselines import BaselineSpec, make_baseline
from xai_lightning.attribution.explained_model import ExplainedModel, ScoreKind
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.superpixels import Segmentation, feature_masks
from xai_lightning.core import ObserverGuard, TargetSpec, observe, split_target, unwrap_model

__all__ = [
    "SurrogateExplanation",
    "SurrogateMethod",
    "evaluate_coalitions",
    "scatter_to_inputs",
    "weighted_ridge",
]


@dataclass
class SurrogateExplanation:
    """Everything a LIME/KernelSHAP fit used and found, for inspection and for cross-checks.

    ``M`` below is the largest feature count of the batch; entries of features ``≥ M_b`` are padding.

    Attributes:
        coefficients: ``(B, M)`` per-feature weights φ (0 on padding).
        intercept: ``(B,)`` φ₀ (KernelSHAP: ``f(x')``).
        feature_masks: ``(B, H, W)`` or ``(B, D)`` feature id of every input element.
        num_features: ``(B,)`` ``M_b``.
        coalitions: ``(B, N, M)`` the evaluated binary coalitions (1 = present).
        weights: ``(B, N)`` regression weight of each coalition.
        scores: ``(B, N)`` model score of each coalition's input.
        targets: ``(B,)`` explained class.
        attributions: coefficients spread back to the input elements, ``(B, H, W)`` or ``(B, D)``.
    """

    coefficients: torch.Tensor
    intercept: torch.Tensor
    feature_masks: torch.Tensor
    num_features: torch.Tensor
    coalitions: torch.Tensor
    weights: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor
    attributions: torch.Tensor


def feature_validity(num_features: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, width)`` bool: True for real features, False for padding."""
    return torch.arange(width, device=num_features.device).view(1, -1) < num_features.view(-1, 1)


def evaluate_coalitions(
    explained: ExplainedModel,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    masks: torch.Tensor,
    coalitions: torch.Tensor,
    targets: torch.Tensor,
    kind: ScoreKind,
) -> torch.Tensor:
    """``(B, N)`` scores of ``f(z ⊙ x + (1 − z) ⊙ x')`` for every example's ``N`` coalitions.

    Rows are example-major (row ``r`` is coalition ``r % N`` of example ``r // N``) and built slice
    by slice, so at most ``max_batch`` perturbed inputs exist at a time.
    """
    batch, count = coalitions.shape[:2]
    flat_masks = masks.flatten(1)

    def perturbed(rows: slice) -> torch.Tensor:
        index = torch.arange(rows.start, rows.stop, device=inputs.device)
        example, sample = index // count, index % count
        present = coalitions[example, sample].gather(1, flat_masks[example]).view(-1, *masks.shape[1:])
        if inputs.dim() == 4:
            present = present.unsqueeze(1)  # one superpixel id per pixel, shared by the channels
        present = present.to(inputs.dtype)
        return inputs[example] * present + baselines[example] * (1 - present)

    # CPU-tuned scoring (channels-last, cache-sized passes) is safe here: the surrogate only ever
    # compares these scores with each other, all computed the same way.
    scores = explained.scores(batch * count, perturbed, targets.repeat_interleave(count), kind, cpu_tuned=True)
    return scores.view(batch, count)


def _solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Batched least-norm solve in float64 (pseudo-inverse: robust to features never toggled)."""
    return (torch.linalg.pinv(matrix) @ rhs.unsqueeze(-1)).squeeze(-1)


def weighted_ridge(
    design: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, alpha: float, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched weighted ridge regression with an unpenalised intercept (scikit-learn's ``Ridge``).

    Minimises ``Σ_n w_n (y_n − φ₀ − z_nᵀφ)² + α‖φ‖²`` per example by weighted centring.

    Args:
        design: ``(B, N, M)`` coalitions; targets ``(B, N)``; weights ``(B, N)``; valid ``(B, M)``.
    Returns:
        ``(coefficients (B, M), intercept (B,))`` in float64; padded features get 0.
    """
    z = design.double() * valid.unsqueeze(1)
    y, w = targets.double(), weights.double()
    total = w.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    z_mean = (w.unsqueeze(-1) * z).sum(1) / total
    y_mean = (w * y).sum(1, keepdim=True) / total
    zc, yc = z - z_mean.unsqueeze(1), y - y_mean
    gram = zc.transpose(1, 2) @ (w.unsqueeze(-1) * zc)
    eye = torch.eye(z.shape[-1], dtype=torch.float64, device=z.device)
    # alpha on real features; 1 on padded ones (their column is zero, so their coefficient is 0).
    gram = gram + eye * torch.where(valid, alpha, 1.0).double().unsqueeze(1)
    coefficients = _solve(gram, (zc.transpose(1, 2) @ (w * yc).unsqueeze(-1)).squeeze(-1)) * valid
    intercept = y_mean.squeeze(1) - (z_mean * coefficients).sum(1)
    return coefficients, intercept


def scatter_to_inputs(coefficients: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Give every input element its feature's coefficient: ``(B, M)`` → ``masks.shape``."""
    return coefficients.gather(1, masks.flatten(1)).view(masks.shape)


class SurrogateMethod(AttributionMethod):
    """Common part of LIME and KernelSHAP: features, baselines, batched evaluation.

    Subclasses implement :meth:`_sample` (the coalitions and their regression weights) and
    :meth:`_fit` (the surrogate's coefficients).

    Output of ``attribute``: images ``(B, C, H, W)`` → ``(B, H, W)`` (each pixel carries its
    superpixel's coefficient); tables ``(B, D)`` → ``(B, D)``. :meth:`explain` returns the full
    :class:`SurrogateExplanation` and accepts a custom feature mask and custom coalitions.
    """

    map_reduction = "none"
    stochastic = True

    def __init__(
        self,
        num_samples: int = 1000,
        baseline: BaselineSpec = "mean",
        score: ScoreKind = "logit",
        segmentation: Segmentation = "slic",
        segmentation_options: dict | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2; got {num_samples}")
        if score not in ("logit", "probability"):
            raise ValueError(f"score must be 'logit' or 'probability'; got {score!r}")
        self.num_samples = num_samples
        self.baseline = baseline
        self.score = score
        self.segmentation = segmentation
        self.segmentation_options = segmentation_options

    # ------------------------------------------------------------------ public API
    def explain(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: TargetSpec = "predicted",
        *,
        feature_mask: torch.Tensor | None = None,
        coalitions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        trainer: Any | None = None,
    ) -> SurrogateExplanation:
        """The full surrogate fit; ``feature_mask`` overrides the segmentation, ``coalitions``
        ``(N, M)`` (shared) or ``(B, N, M)`` overrides the sampling (0/1 entries, ``M`` = the
        largest feature count)."""
        self._check_inputs(inputs)
        network = unwrap_model(model)
        score_fn, target = split_target(target)
        with observe(network, trainer=trainer, seed=self.seed) as guard:
            x = inputs.detach().clone()
            label_copy = None if labels is None else torch.as_tensor(labels).detach().clone().to(x.device)
            explained = ExplainedModel(
                network, self.output_key, self.max_batch, score_fn=score_fn, like=x, fold_batchnorm=self.fold_batchnorm
            )
            result = self._explain(explained, x, target, label_copy, guard, feature_mask, coalitions)
        return result

    # ------------------------------------------------------------------ internals
    def _attribute(self, explained, inputs, target, labels, guard):
        return self._explain(explained, inputs, target, labels, guard, None, None).attributions, None

    def _explain(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
        feature_mask: torch.Tensor | None,
        coalitions: torch.Tensor | None,
        baselines: torch.Tensor | None = None,
    ) -> SurrogateExplanation:
        """The fit; ``baselines`` (shaped like ``inputs``) overrides the ``baseline`` option."""
        masks, counts = feature_masks(inputs, feature_mask, self.segmentation, self.segmentation_options)
        width = int(counts.max())
        valid = feature_validity(counts, width)
        if coalitions is None:
            coalitions, weights = self._sample(counts, width)
        else:
            coalitions = self._check_coalitions(coalitions, inputs.shape[0], width)
            weights = self._weights(coalitions, counts, valid)
        coalitions = coalitions.to(inputs.device) * valid.unsqueeze(1)
        targets, _ = explained.resolve(inputs, target, labels)
        if baselines is None:
            baselines = make_baseline(self.baseline, inputs)
        scores = evaluate_coalitions(explained, inputs, baselines, masks, coalitions, targets, self.score)
        coefficients, intercept = self._fit(coalitions, scores, weights.to(inputs.device), valid)
        attributions = scatter_to_inputs(coefficients.to(inputs.dtype), masks)
        return SurrogateExplanation(
            coefficients=coefficients.float(),
            intercept=intercept.float(),
            feature_masks=masks,
            num_features=counts,
            coalitions=coalitions,
            weights=weights.float(),
            scores=scores,
            targets=targets,
            attributions=attributions,
        )

    @staticmethod
    def _check_coalitions(coalitions: torch.Tensor, batch: int, width: int) -> torch.Tensor:
        coalitions = torch.as_tensor(coalitions)
        given = tuple(coalitions.shape)
        if coalitions.dim() == 2:
            coalitions = coalitions.unsqueeze(0).expand(batch, -1, -1)
        if coalitions.dim() != 3 or coalitions.shape[0] != batch or coalitions.shape[2] != width:
            raise ValueError(
                f"Coalitions of shape {given} do not fit {batch} examples with at most {width} "
                f"features: give (N, {width}) shared or ({batch}, N, {width}) per example."
            )
        if not ((coalitions == 0) | (coalitions == 1)).all():
            raise ValueError("Coalitions are binary: 1 keeps a feature, 0 replaces it by the baseline.")
        return coalitions.long()

    def _sample(self, counts: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _weights(self, coalitions: torch.Tensor, counts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _fit(self, coalitions, scores, weights, valid) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
