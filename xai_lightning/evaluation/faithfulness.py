"""Faithfulness correlation (Bhatt, Weller & Moura, "Evaluating and Aggregating Feature-based Model
Explanations", IJCAI 2020).

For each example and each of ``D`` draws, a random subset ``S_d`` of ``k`` features (pixels, or
input elements) is replaced by a baseline; the metric is the Pearson correlation, over the
draws, between the map's sum over the subset and the drop of the explained class's score::

    ρ = corr_d( Σ_{i∈S_d} φ_i ,  f(x) − f(x with S_d replaced) )         ∈ [−1, 1], higher is better

Subsets come from a private generator seeded with ``seed`` (one draw of ``D`` subsets shared by
every example, so results do not depend on batching or DDP sharding), or are given explicitly
(``subsets=``, e.g. to reproduce another implementation's). All ``B·(D + 1)`` inputs go through
the model in batched passes capped by ``max_batch``.

Degenerate cases get a defined value instead of NaN: when the subset sums or the score drops are
constant over the draws (an all-zero or constant map; a model insensitive to the subsets), the
correlation is 0.

Quantus 0.6.0's ``FaithfulnessCorrelation`` computes the same quantity with subsets of input
*elements* (it broadcasts a ``(B, 1, H, W)`` map over the channels); with maps shaped like the
inputs, or one channel, and the same subsets, the values agree (tested).
"""

from __future__ import annotations

from typing import Any

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

__all__ = ["FaithfulnessCorrelation", "faithfulness_correlation", "pearson_rows", "subset_count"]


def subset_count(subset_size: float, num_features: int) -> int:
    """Features per subset: an int is a count, a float in (0, 1) a fraction of the features."""
    if isinstance(subset_size, bool) or subset_size <= 0:
        raise ValueError(f"subset_size must be a positive count or a fraction in (0, 1); got {subset_size}")
    if isinstance(subset_size, float) and subset_size < 1:
        count = max(1, round(subset_size * num_features))
    else:
        count = int(subset_size)
    if count > num_features:
        raise ValueError(f"subset_size={subset_size} is more than the {num_features} features of the map")
    return count


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of ``a[i]`` and ``b[i]`` over the last dimension, in float64 → ``(B,)``;
    0 where either row is constant (the correlation is undefined there)."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    denominator = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    defined = denominator > 0
    return torch.where(defined, (a * b).sum(-1) / denominator.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def faithfulness_correlation(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetSpec = "predicted",
    *,
    draws: int = 50,
    subset_size: float = 0.1,
    baseline: BaselineSpec = "zero",
    score: MetricScore = "logit",
    seed: int = 0,
    subsets: torch.Tensor | None = None,
    output_key: str | int | None = None,
    max_batch: int | None = 256,
) -> torch.Tensor:
    """``(B,)`` faithfulness correlation of ``maps`` (``(B, H, W)`` or shaped like ``inputs``).

    Args:
        draws: random subsets per example (D).
        subset_size: features per subset, a count or a fraction of the features (default 10 %).
        baseline: value of the removed features (``"zero"``, ``"mean"``, ``"blur"``, a number, a tensor).
        score: ``"logit"`` (default, as Quantus), ``"probability"`` or ``"accuracy"``.
        seed: seed of the private generator of the subsets.
        subsets: explicit feature indices ``(D, k)`` shared by the examples or ``(B, D, k)``;
            overrides ``draws``, ``subset_size`` and ``seed``.
    """
    check_score(score)
    flat_maps = finite_maps(check_maps(inputs, maps))
    batch, num_features = flat_maps.shape
    if subsets is None:
        if draws < 2:
            raise ValueError(f"A correlation needs draws >= 2; got {draws}")
        k = subset_count(subset_size, num_features)
        generator = torch.Generator().manual_seed(int(seed))
        subsets = torch.rand(draws, num_features, generator=generator).argsort(1)[:, :k]
    subsets = torch.as_tensor(subsets, dtype=torch.long)
    if subsets.dim() == 2:
        subsets = subsets.unsqueeze(0).expand(batch, *subsets.shape)
    if subsets.dim() != 3 or subsets.shape[0] != batch or subsets.numel() == 0:
        raise ValueError(f"subsets must be (D, k) or ({batch}, D, k) feature indices; got {tuple(subsets.shape)}")
    if int(subsets.max()) >= num_features or int(subsets.min()) < 0:
        raise ValueError(f"subsets index features 0..{num_features - 1}; got indices up to {int(subsets.max())}")
    num_draws = subsets.shape[1]
    with evaluated_model(model, output_key, max_batch, like=inputs) as explained:
        x = inputs.detach().clone()
        resolved = resolve_metric_targets(explained, x, targets)
        base = make_baseline(baseline, x, generator=torch.Generator().manual_seed(int(seed)))
        subsets = subsets.to(x.device)
        selected = torch.zeros(batch, num_draws, num_features, dtype=torch.bool, device=x.device)
        selected.scatter_(2, subsets, True)

        def perturbed(rows: slice) -> torch.Tensor:
            index = torch.arange(rows.start, rows.stop, device=x.device)
            example, draw = index % batch, index // batch - 1  # step 0: the unperturbed input
            removed = selected[example, draw.clamp_min(0)] & (draw >= 0).unsqueeze(1)
            return torch.where(expand_features(removed, x), base[example], x[example])

        scores = row_scores(explained, batch * (num_draws + 1), perturbed, resolved.repeat(num_draws + 1), score)
    scores = scores.view(num_draws + 1, batch).T
    drops = scores[:, :1] - scores[:, 1:]
    sums = (flat_maps.to(selected.device).double().unsqueeze(1) * selected).sum(-1)
    return pearson_rows(sums, drops).float()


class FaithfulnessCorrelation(ExplanationMetric):
    """Mean faithfulness correlation (Bhatt et al. 2020) as a torchmetric; higher is better.
    Options: :func:`faithfulness_correlation`."""

    key = "faithfulness_correlation"
    higher_is_better = True

    def __init__(
        self,
        model: nn.Module,
        draws: int = 50,
        subset_size: float = 0.1,
        baseline: BaselineSpec = "zero",
        score: MetricScore = "logit",
        seed: int = 0,
        output_key: str | int | None = None,
        max_batch: int | None = 256,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        check_score(score)
        if draws < 2:
            raise ValueError(f"A correlation needs draws >= 2; got {draws}")
        self.options: dict[str, Any] = {
            "draws": draws,
            "subset_size": subset_size,
            "baseline": baseline,
            "score": score,
            "seed": seed,
            "output_key": output_key,
            "max_batch": max_batch,
        }

    def values(self, inputs, maps, targets="predicted", masks=None) -> torch.Tensor:
        return faithfulness_correlation(self.model, inputs, maps, targets, **self.options)
