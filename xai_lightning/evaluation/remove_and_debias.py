"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, ICML 2022).

Pixel removal without retraining, made fair: removed pixels are filled by noisy linear
imputation (:mod:`~xai_lightning.evaluation.linear_imputation`), so the *shape* of the
removed region leaks no class information. For each removal fraction ``t`` (default 10 … 90 %)
the top ``⌊t·H·W⌋`` pixels are removed

* most relevant first (``order="morf"``): a faithful map makes the score fall fast — lower is better;
* least relevant first (``order="lerf"``): the score should stay — higher is better;

and the explained class's score is recorded. The scalar is the mean of that curve over the
fractions. ``score="accuracy"`` gives the paper's accuracy curves (1 where the prediction is
still the target); the default ``"probability"`` is smoother on a small probe set.

All ``B × T`` imputations are solved together and scored in batched passes capped by
``max_batch``. The imputation noise comes from a private generator seeded with ``seed``, one
draw per fraction shared by the examples (independent of batching and sharding).

Quantus 0.6.0's ``ROAD`` is the MoRF accuracy curve (``score="accuracy"``) with its percentages
``p`` as fractions ``p/100``; its imputation indexes pixels of the flattened map, so it only works
for one-channel inputs (with three, an index error). With noise 0 (its noise is NumPy's
global draw) both impute the same values and give the same curve (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.core import TargetSpec
from xai_lightning.evaluation.deletion_insertion import feature_ranks
from xai_lightning.evaluation.explanation_metric import ExplanationMetric
from xai_lightning.evaluation.linear_imputation import noisy_linear_imputation
from xai_lightning.evaluation.map_shape import check_maps
from xai_lightning.evaluation.model_scores import (
    MetricScore,
    check_score,
    evaluated_model,
    resolve_metric_targets,
    row_scores,
)

__all__ = ["DEFAULT_FRACTIONS", "ROAD", "RoadCurve", "road", "road_curve"]

Order = Literal["morf", "lerf"]
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class RoadCurve:
    """``fractions (T,)`` removed and ``scores (B, T)`` of the explained classes ``targets (B,)``."""

    fractions: torch.Tensor
    scores: torch.Tensor
    targets: torch.Tensor


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    values = [float(f) for f in fractions]
    if not values or any(not 0.0 <= f <= 1.0 for f in values):
        raise ValueError(f"fractions must be a non-empty list of values in [0, 1]; got {list(fractions)}")
    return values


def road_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetSpec = "predicted",
    *,
    order: Order = "morf",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    noise: float = 0.01,
    score: MetricScore = "probability",
    seed: int = 0,
    output_key: str | int | None = None,
    max_batch: int | None = 256,
) -> RoadCurve:
    """ROAD curves of per-pixel ``maps`` ``(B, H, W)`` (or ``(B, 1, H, W)``) on images ``(B, C, H, W)``.

    Args:
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        fractions: removal fractions in [0, 1].
        noise: standard deviation of the imputation noise (ROAD: 0.01).
        score: ``"probability"`` (default), ``"logit"`` or ``"accuracy"`` (the paper's).
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf'; got {order!r}")
    check_score(score)
    values = _check_fractions(fractions)
    if inputs.dim() != 4:
        raise ValueError(f"ROAD imputes pixels of images (B, C, H, W); got inputs of shape {tuple(inputs.shape)}")
    flat_maps = check_maps(inputs, maps)
    if flat_maps.shape[1] != inputs.shape[2] * inputs.shape[3]:
        raise ValueError(
            f"ROAD ranks pixels: give per-pixel maps ({inputs.shape[0]}, {inputs.shape[2]}, "
            f"{inputs.shape[3]}), not maps of shape {tuple(maps.shape)}"
        )
    num_pixels = flat_maps.shape[1]
    counts = torch.tensor([math.floor(num_pixels * f + 1e-6) for f in values], dtype=torch.long)
    with evaluated_model(model, output_key, max_batch, like=inputs) as explained:
        x = inputs.detach().clone()
        batch = x.shape[0]
        resolved = resolve_metric_targets(explained, x, targets)
        ranks = feature_ranks(flat_maps.to(x.device))
        if order == "lerf":
            ranks = num_pixels - 1 - ranks
        counts = counts.to(x.device)
        generator = torch.Generator().manual_seed(int(seed))
        noise_draws = torch.randn((len(values), *x.shape[1:]), generator=generator, dtype=torch.float64)

        def imputed(rows: slice) -> torch.Tensor:
            index = torch.arange(rows.start, rows.stop, device=x.device)
            example, step = index % batch, index // batch
            removed = (ranks[example] < counts[step].unsqueeze(1)).view(-1, *x.shape[2:])
            return noisy_linear_imputation(x[example], removed, noise=noise, noise_draws=noise_draws[step.cpu()])

        scores = row_scores(explained, batch * len(values), imputed, resolved.repeat(len(values)), score)
    return RoadCurve(
        fractions=torch.tensor(values), scores=scores.view(len(values), batch).T.contiguous(), targets=resolved
    )


def road(
    model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, targets: TargetSpec = "predicted", **options
) -> torch.Tensor:
    """``(B,)`` mean of the ROAD curve over the removal fractions; options of :func:`road_curve`."""
    return road_curve(model, inputs, maps, targets, **options).scores.mean(1)


class ROAD(ExplanationMetric):
    """Mean ROAD score (Rong et al. 2022) as a torchmetric: lower is better for ``order="morf"``,
    higher for ``"lerf"`` (so ``higher_is_better`` is None). Options: :func:`road_curve`."""

    def __init__(
        self,
        model: nn.Module,
        order: Order = "morf",
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        noise: float = 0.01,
        score: MetricScore = "probability",
        seed: int = 0,
        output_key: str | int | None = None,
        max_batch: int | None = 256,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        if order not in ("morf", "lerf"):
            raise ValueError(f"order must be 'morf' or 'lerf'; got {order!r}")
        check_score(score)
        self.key = f"road_{order}"
        self.options: dict[str, Any] = {
            "order": order,
            "fractions": _check_fractions(fractions),
            "noise": noise,
            "score": score,
            "seed": seed,
            "output_key": output_key,
            "max_batch": max_batch,
        }

    def values(self, inputs, maps, targets="predicted", masks=None) -> torch.Tensor:
        return road(self.model, inputs, maps, targets, **self.options)
