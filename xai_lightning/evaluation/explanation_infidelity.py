"""Infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, "On the (In)fidelity and Sensitivity of
Explanations", NeurIPS 2019).

For perturbations ``I`` drawn from a distribution μ_I::

    INFD(φ, f, x) = E_I[ (Iᵀφ − (f(x) − f(x − I)))² ]                    lower is better

``f`` is the explained class's logit (default). A per-pixel map ``(B, H, W)`` dots the channel
sum of ``I``; a map shaped like the inputs dots ``I`` element-wise. Perturbations:

=============  =====================================================================================
``"noise"``    ``I ~ N(0, σ²)`` per element (Yeh's noisy baseline), σ = ``noise_std``
``"square"``   a random ``square × square`` patch set to the baseline (Yeh's square removal): ``I = x − x̃``
``"subset"``   each feature set to the baseline with probability ``subset_p``: ``I = (x − x̄) ⊙ ε``
=============  =====================================================================================

``multiply_by_inputs=True`` is for maps that already carry the input factor (Integrated
Gradients, input × gradient, occlusion): ``I`` is divided by ``x − x̄`` (zeros of the divisor
by 1, as Captum does), so that for a linear model and baseline-replacing perturbations Integrated
Gradients' infidelity is 0. ``normalize=True`` (default; Yeh et al. and Captum's ``normalize``)
first rescales the map by the least-squares factor β = Σ IᵀφΔf / Σ (Iᵀφ)², which makes the
score independent of the map's scale — needed to compare methods with different units and the
random-map reference; an all-zero map then scores E[Δf²] (β = 0) instead of NaN.

Draws come from a private generator seeded with ``seed``, one draw shared by the examples (so
results do not depend on batching or sharding), or are given explicitly (``perturbations=``).
All ``B·(S + 1)`` inputs are scored in batched passes capped by ``max_batch``.

Quantus 0.6.0's ``Infidelity`` uses a deterministic sequence instead of a distribution: patches
replaced one after another, cumulatively, by the image minimum; its value is the mean over that
sequence of the same squared error (with ``normalise=False``). Given the same perturbations,
with ``normalize=False``, the values agree (tested).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.attribution.baselines import BaselineSpec, make_baseline
from xai_lightning.core import TargetSpec
from xai_lightning.evaluation.degenerate_map_checks import finite_maps
from xai_lightning.evaluation.explanation_metric import ExplanationMetric
from xai_lightning.evaluation.map_shape import check_maps
from xai_lightning.evaluation.model_scores import (
    MetricScore,
    check_score,
    evaluated_model,
    resolve_metric_targets,
    row_scores,
)

__all__ = ["Infidelity", "draw_perturbations", "infidelity"]

Perturbation = Literal["noise", "square", "subset"]


def draw_perturbations(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    samples: int,
    perturbation: Perturbation,
    generator: torch.Generator,
    noise_std: float = 0.1,
    square: int = 4,
    subset_p: float = 0.25,
) -> torch.Tensor:
    """``(B, S, *x.shape[1:])`` perturbations ``I`` (the perturbed input is ``x − I``); one draw of the
    random pattern, shared by every example."""
    batch, shape = inputs.shape[0], tuple(inputs.shape[1:])
    if perturbation == "noise":
        noise = torch.randn((samples, *shape), generator=generator) * noise_std
        return noise.to(inputs.device, inputs.dtype).unsqueeze(0).expand(batch, *noise.shape)
    difference = (inputs - baselines).unsqueeze(1)
    if perturbation == "subset":
        pattern_shape = (samples, 1, *shape[1:]) if inputs.dim() == 4 else (samples, *shape)
        chosen = torch.rand(pattern_shape, generator=generator) < subset_p
    elif perturbation == "square":
        if inputs.dim() != 4:
            raise ValueError(f"Square removal perturbs images (B, C, H, W); got inputs of shape {tuple(inputs.shape)}")
        height, width = shape[1:]
        if not 1 <= square <= min(height, width):
            raise ValueError(f"square must be in 1..{min(height, width)}; got {square}")
        top = torch.randint(0, height - square + 1, (samples,), generator=generator)
        left = torch.randint(0, width - square + 1, (samples,), generator=generator)
        rows = torch.arange(height).view(1, height, 1)
        cols = torch.arange(width).view(1, 1, width)
        inside = (
            (rows >= top.view(-1, 1, 1))
            & (rows < (top + square).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1))
            & (cols < (left + square).view(-1, 1, 1))
        )
        chosen = inside.unsqueeze(1)
    else:
        raise ValueError(f"Unknown perturbation {perturbation!r}; use 'noise', 'square' or 'subset'.")
    return difference * chosen.to(inputs.device, inputs.dtype).unsqueeze(0)


def infidelity(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetSpec = "predicted",
    *,
    perturbation: Perturbation = "noise",
    samples: int = 10,
    noise_std: float = 0.1,
    square: int = 4,
    subset_p: float = 0.25,
    baseline: BaselineSpec = "zero",
    multiply_by_inputs: bool = False,
    normalize: bool = True,
    score: MetricScore = "logit",
    seed: int = 0,
    perturbations: torch.Tensor | None = None,
    output_key: str | int | None = None,
    max_batch: int | None = 256,
) -> torch.Tensor:
    """``(B,)`` infidelity of ``maps`` (``(B, H, W)`` or shaped like ``inputs``); lower is better.

    Args:
        perturbation, noise_std, square, subset_p: the distribution of ``I`` (module docstring).
        samples: perturbations per example (S; Yeh et al. and Captum use 10).
        baseline: what ``"square"`` and ``"subset"`` replace features with.
        multiply_by_inputs: divide ``I`` by ``x − baseline`` (for maps with the input factor).
        normalize: rescale the map by the least-squares β first (Yeh et al.; scale-free).
        score: ``"logit"`` (default) or ``"probability"``.
        perturbations: explicit ``I``, ``(S, *x.shape[1:])`` or ``(B, S, *x.shape[1:])``.
    """
    check_score(score)
    flat_maps = finite_maps(check_maps(inputs, maps))
    if samples < 1:
        raise ValueError(f"samples must be >= 1; got {samples}")
    with evaluated_model(model, output_key, max_batch, like=inputs) as explained:
        x = inputs.detach().clone()
        batch, shape = x.shape[0], tuple(x.shape[1:])
        resolved = resolve_metric_targets(explained, x, targets)
        generator = torch.Generator().manual_seed(int(seed))
        base = make_baseline(baseline, x, generator=generator)
        if perturbations is None:
            perturbation_tensor = draw_perturbations(
                x, base, samples, perturbation, generator, noise_std, square, subset_p
            )
        else:
            perturbation_tensor = torch.as_tensor(perturbations).to(x.device, x.dtype)
            if tuple(perturbation_tensor.shape[1:]) == shape and perturbation_tensor.dim() == x.dim():
                perturbation_tensor = perturbation_tensor.unsqueeze(0).expand(batch, *perturbation_tensor.shape)
            if (
                perturbation_tensor.dim() != x.dim() + 1
                or perturbation_tensor.shape[0] != batch
                or tuple(perturbation_tensor.shape[2:]) != shape
            ):
                raise ValueError(
                    f"perturbations must be (S, {', '.join(map(str, shape))}) or (B, S, ...) for inputs "
                    f"of shape {tuple(x.shape)}; got {tuple(perturbation_tensor.shape)}"
                )
        num = perturbation_tensor.shape[1]

        def perturbed(rows: slice) -> torch.Tensor:
            index = torch.arange(rows.start, rows.stop, device=x.device)
            example, draw = index % batch, index // batch - 1  # step 0: the unperturbed input
            keep = (draw >= 0).to(x.dtype).view(-1, *([1] * len(shape)))
            return x[example] - keep * perturbation_tensor[example, draw.clamp_min(0)]

        scores = row_scores(explained, batch * (num + 1), perturbed, resolved.repeat(num + 1), score)
    scores = scores.view(num + 1, batch).T.double()
    drops = scores[:, :1] - scores[:, 1:]  # (B, S)
    dotted = perturbation_tensor.double()
    if multiply_by_inputs:
        divisor = (x - base).double().unsqueeze(1)
        dotted = dotted / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    if flat_maps.shape[1] != x[0].numel():  # per-pixel map: dot the channel sum of I
        dotted = dotted.sum(2)
    products = (dotted.flatten(2) * flat_maps.to(dotted.device).double().unsqueeze(1)).sum(-1)  # (B, S)
    if normalize:
        energy = products.square().sum(1, keepdim=True)
        beta = torch.where(energy > 0, (products * drops).sum(1, keepdim=True) / energy.clamp_min(1e-300), 0.0)
        products = beta * products
    return (products - drops).square().mean(1).float()


class Infidelity(ExplanationMetric):
    """Mean infidelity (Yeh et al. 2019) as a torchmetric; lower is better. Options: :func:`infidelity`."""

    key = "infidelity"
    higher_is_better = False

    def __init__(
        self,
        model: nn.Module,
        perturbation: Perturbation = "noise",
        samples: int = 10,
        noise_std: float = 0.1,
        square: int = 4,
        subset_p: float = 0.25,
        baseline: BaselineSpec = "zero",
        multiply_by_inputs: bool = False,
        normalize: bool = True,
        score: MetricScore = "logit",
        seed: int = 0,
        output_key: str | int | None = None,
        max_batch: int | None = 256,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        check_score(score)
        if perturbation not in ("noise", "square", "subset"):
            raise ValueError(f"Unknown perturbation {perturbation!r}; use 'noise', 'square' or 'subset'.")
        if samples < 1:
            raise ValueError(f"samples must be >= 1; got {samples}")
        self.options: dict[str, Any] = {
            "perturbation": perturbation,
            "samples": samples,
            "noise_std": noise_std,
            "square": square,
            "subset_p": subset_p,
            "baseline": baseline,
            "multiply_by_inputs": multiply_by_inputs,
            "normalize": normalize,
            "score": score,
            "seed": seed,
            "output_key": output_key,
            "max_batch": max_batch,
        }

    def values(self, inputs, maps, targets="predicted", masks=None) -> torch.Tensor:
        return infidelity(self.model, inputs, maps, targets, **self.options)
