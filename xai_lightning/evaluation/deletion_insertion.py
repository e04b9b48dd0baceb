"""Deletion and insertion (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of
Black-box Models", BMVC 2018).

Rank the features (pixels, or input elements) by the map, most relevant first. *Deletion*
replaces the top ``k`` features by a baseline (zeros by default) for ``k = 0, F/S, 2F/S, …, F``
and records the explained class's score; a faithful map makes the score collapse early, so a
**lower** area under the curve is better. *Insertion* starts from the baseline (a blurred copy
by default) and puts the top ``k`` features back; a **higher** area is better.

The curve is sampled at ``S + 1`` removal fractions ``k/F`` (``k = ⌊s·F/S⌋``, ``s = 0…S``) and
its area is the trapezoid rule over the fraction axis, so it lies in the score's range
(probabilities: [0, 1]). Ties in the map are ranked in row-major order (a stable sort), which
also defines the score of a constant map.

All ``B·(S + 1)`` perturbed inputs go through the model as rows of batched passes capped by
``max_batch`` — never one image or one step at a time.

Quantus 0.6.0's ``PixelFlipping`` is the deletion curve without its unperturbed first point, on
input elements, with an area of ``np.trapz(dx=1)`` over the steps: with one channel (or maps
shaped like the inputs) and ``F/S`` features per step, its curve equals ``curve[:, 1:]`` here
and its AUC equals ``S·AUC − (curve[:, 0] + curve[:, 1]) / 2`` (tested). Quantus has no insertion metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.attribution.baselines import BaselineSpec, make_baseline
from xai_lightning.core import TargetSpec
from xai_lightning.evaluation.degenerate_map_checks import finite_maps
from xai_lightning.evaluation.explanation_metric import ExplanationMetric
from xai_lightning.evaluation.map_shape import check_maps, expand_features
from xai_lightning.evaluation.model_scores import (
    MetricScore,
    check_score,
    evaluated_model,
    resolve_metric_targets,
    row_scores,
)

__all__ = [
    "DeletionAUC",
    "InsertionAUC",
    "PerturbationCurve",
    "deletion_auc",
    "feature_ranks",
    "insertion_auc",
    "perturbation_curve",
    "removal_counts",
]

Mode = Literal["deletion", "insertion"]


@dataclass(frozen=True)
class PerturbationCurve:
    """A deletion or insertion curve per example.

    Attributes:
        fractions: ``(S + 1,)`` fraction of features removed (deletion) or inserted (insertion).
        scores: ``(B, S + 1)`` the target class's score at each fraction.
        targets: ``(B,)`` the explained classes.
    """

    fractions: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor

    @property
    def auc(self) -> torch.Tensor:
        """``(B,)`` trapezoid area under the curve over the fraction axis [0, 1]."""
        return torch.trapezoid(self.scores.double(), self.fractions.double().to(self.scores.device), dim=1).float()


def feature_ranks(maps_flat: torch.Tensor) -> torch.Tensor:
    """``(B, F)`` rank of each feature, 0 = most relevant; ties in row-major order (stable sort).

    NaN/inf entries count as 0 (see :mod:`~xai_lightning.evaluation.degenerate_map_checks`).
    """
    order = torch.sort(finite_maps(maps_flat), dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def removal_counts(num_features: int, steps: int) -> torch.Tensor:
    """``(steps + 1,)`` features removed at each step: ``⌊s·F/steps⌋`` for ``s = 0…steps``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    return torch.arange(steps + 1, dtype=torch.long) * num_features // steps


def perturbation_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetSpec = "predicted",
    *,
    mode: Mode = "deletion",
    steps: int = 32,
    baseline: BaselineSpec | None = None,
    blur_sigma: float | None = None,
    score: MetricScore = "probability",
    output_key: str | int | None = None,
    max_batch: int | None = 256,
) -> PerturbationCurve:
    """Deletion or insertion curves of ``maps`` for ``inputs`` ``(B, C, H, W)`` (or ``(B, D)``).

    Args:
        maps: ``(B, H, W)`` per-pixel maps, or maps shaped like ``inputs``; larger = more relevant.
        targets: ``(B,)`` classes, one class for all, or ``"predicted"``.
        mode: ``"deletion"`` (remove the most relevant first) or ``"insertion"`` (insert them first).
        steps: number of removal/insertion steps S (the curve has S + 1 points).
        baseline: what removed features become (deletion) or where insertion starts: ``"zero"``
            (deletion's default), ``"blur"`` (insertion's default), ``"mean"``, ``"uniform"``, a
            number or a tensor (see :mod:`~xai_lightning.attribution.baselines`).
        blur_sigma: Gaussian width in pixels of the ``"blur"`` baseline (default: side / 8).
        score: ``"probability"`` (softmax of the target, the paper's), ``"logit"`` or ``"accuracy"``.
        max_batch: most perturbed inputs per forward pass.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion'; got {mode!r}")
    check_score(score)
    flat_maps = check_maps(inputs, maps)
    counts = removal_counts(flat_maps.shape[1], steps)
    if baseline is None:
        baseline = "zero" if mode == "deletion" else "blur"
    with evaluated_model(model, output_key, max_batch, like=inputs) as explained:
        x = inputs.detach().clone()
        batch = x.shape[0]
        resolved = resolve_metric_targets(explained, x, targets)
        base = make_baseline(baseline, x, blur_sigma=blur_sigma, generator=torch.Generator().manual_seed(0))
        ranks = feature_ranks(flat_maps.to(x.device))
        counts = counts.to(x.device)

        def perturbed(rows: slice) -> torch.Tensor:
            index = torch.arange(rows.start, rows.stop, device=x.device)
            example, step = index % batch, index // batch
            selected = expand_features(ranks[example] < counts[step].unsqueeze(1), x)
            if mode == "deletion":
                return torch.where(selected, base[example], x[example])
            return torch.where(selected, x[example], base[example])

        total = batch * (steps + 1)
        scores = row_scores(explained, total, perturbed, resolved.repeat(steps + 1), score)
    return PerturbationCurve(
        fractions=counts.float() / flat_maps.shape[1],
        scores=scores.view(steps + 1, batch).T.contiguous(),
        targets=resolved,
    )


def deletion_auc(
    model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, targets: TargetSpec = "predicted", **options
) -> torch.Tensor:
    """``(B,)`` area under the deletion curve (lower is better); options of :func:`perturbation_curve`."""
    return perturbation_curve(model, inputs, maps, targets, mode="deletion", **options).auc


def insertion_auc(
    model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, targets: TargetSpec = "predicted", **options
) -> torch.Tensor:
    """``(B,)`` area under the insertion curve (higher is better); options of :func:`perturbation_curve`."""
    return perturbation_curve(model, inputs, maps, targets, mode="insertion", **options).auc


class _CurveAUC(ExplanationMetric):
    mode: Mode = "deletion"

    def __init__(
        self,
        model: nn.Module,
        steps: int = 32,
        baseline: BaselineSpec | None = None,
        blur_sigma: float | None = None,
        score: MetricScore = "probability",
        output_key: str | int | None = None,
        max_batch: int | None = 256,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        removal_counts(1, steps)  # validate now
        check_score(score)
        self.options: dict[str, Any] = {
            "steps": steps,
            "baseline": baseline,
            "blur_sigma": blur_sigma,
            "score": score,
            "output_key": output_key,
            "max_batch": max_batch,
        }

    def values(self, inputs, maps, targets="predicted", masks=None) -> torch.Tensor:
        return perturbation_curve(self.model, inputs, maps, targets, mode=self.mode, **self.options).auc


class DeletionAUC(_CurveAUC):
    """Mean deletion AUC (Petsiuk et al. 2018) as a torchmetric; lower is better.

    Options: :func:`perturbation_curve`."""

    key = "deletion_auc"
    higher_is_better = False
    mode = "deletion"


class InsertionAUC(_CurveAUC):
    """Mean insertion AUC (Petsiuk et al. 2018) as a torchmetric; higher is better.

    Options: :func:`perturbation_curve`."""

    key = "insertion_auc"
    higher_is_better = True
    mode = "insertion"
