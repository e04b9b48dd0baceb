"""Max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, "On the (In)fidelity and Sensitivity of
Explanations", NeurIPS 2019).

How much does the explanation change when the input moves a little? With ``S`` inputs drawn
uniformly from the L∞ ball of radius ``r`` around ``x``::

    SENS_MAX(Φ, x) = max_s ‖Φ(x + δ_s) − Φ(x)‖₂ / ‖Φ(x)‖₂                lower is better

The explained class stays the one of ``x``. ``relative=True`` (default, as Quantus) divides by
``‖Φ(x)‖``, which makes methods with different units comparable; ``relative=False`` is Yeh et
al.'s plain difference (Captum's ``sensitivity_max``). An all-zero ``Φ(x)`` cannot be divided
by: its relative sensitivity uses ``‖Φ(x + δ)‖`` instead (1 when the perturbed map is non-zero,
0 when it is zero too), never NaN.

All ``B·S`` perturbed inputs are explained in one batched call of the method (capped by its
``max_batch``). The noise comes from a private generator seeded with ``seed`` (one draw shared by
the examples) or is given explicitly (``noise=``).

The chance level (:meth:`MaxSensitivity.random_values`) is a *random explainer*: a fresh random
map for every perturbed input.

Quantus 0.6.0's ``MaxSensitivity`` is the same quantity (uniform noise in ``[−r, r]``,
Frobenius norms, relative); with the same noise and the same explanation function the values
agree (tested). Its default radius is 0.2 with 200 samples; ours 0.02 with 10 (Yeh et al. and Captum).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import TargetSpec
from xai_lightning.evaluation.degenerate_map_checks import finite_maps
from xai_lightning.evaluation.explanation_metric import ExplanationMetric
from xai_lightning.evaluation.map_shape import check_maps
from xai_lightning.evaluation.model_scores import evaluated_model, resolve_metric_targets

__all__ = ["MaxSensitivity", "as_explainer", "max_sensitivity"]

#: ``(model, inputs, targets (B,)) -> maps``
ExplainFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
ExplainSpec = str | AttributionMethod | ExplainFunction


def as_explainer(explain: ExplainSpec, **method_options: Any) -> ExplainFunction:
    """An explanation function from a method name, an :class:`AttributionMethod` or a callable.

    A method's function returns its raw attribution and carries the method as ``.method``;
    :func:`max_sensitivity` turns the attribution into the method's heatmap (``method.to_map``)
    when the given maps are per-pixel.
    """
    if isinstance(explain, str):
        from xai_lightning.attribution.registry import get_method

        explain = get_method(explain, **method_options)
    if isinstance(explain, AttributionMethod):
        method = explain

        def explain_with_method(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            attribution = method.attribute(model, inputs, targets)
            assert isinstance(attribution, torch.Tensor)
            return attribution

        explain_with_method.method = method  # type: ignore[attr-defined]
        return explain_with_method
    if callable(explain):
        return explain
    raise TypeError(f"explain must be a method name, an AttributionMethod or a callable; got {type(explain).__name__}")


def max_sensitivity(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetSpec = "predicted",
    *,
    explain: ExplainSpec,
    radius: float = 0.02,
    samples: int = 10,
    relative: bool = True,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    output_key: str | int | None = None,
    max_batch: int | None = 256,
) -> torch.Tensor:
    """``(B,)`` max-sensitivity of the explanations ``maps`` = Φ(inputs) produced by ``explain``.

    Args:
        explain: how ``maps`` were made: a method name, an :class:`AttributionMethod` or a callable
            ``(model, inputs, targets) -> maps``; it re-explains the perturbed inputs.
        radius: half-width r of the uniform noise (L∞ ball).
        samples: perturbed inputs per example (S).
        relative: divide by ‖Φ(x)‖ (Quantus' default) or not (Yeh et al., Captum).
        noise: explicit ``δ``, ``(S, *x.shape[1:])`` or ``(B, S, *x.shape[1:])``.
        max_batch: cap for a method given by name.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1; got {samples}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0; got {radius}")
    options = {"max_batch": max_batch} if isinstance(explain, str) else {}
    explainer = as_explainer(explain, **options)
    reference = finite_maps(check_maps(inputs, maps))
    with evaluated_model(model, output_key, max_batch, like=inputs) as explained:
        x = inputs.detach().clone()
        batch, shape = x.shape[0], tuple(x.shape[1:])
        resolved = resolve_metric_targets(explained, x, targets)
        if noise is None:
            generator = torch.Generator().manual_seed(int(seed))
            draw = (torch.rand((samples, *shape), generator=generator) * 2 - 1) * radius
            noise_tensor = draw.to(x.device, x.dtype).unsqueeze(1).expand(samples, batch, *shape)
        else:
            noise_tensor = torch.as_tensor(noise).to(x.device, x.dtype)
            if noise_tensor.dim() == x.dim():
                noise_tensor = noise_tensor.unsqueeze(0).expand(batch, *noise_tensor.shape)
            if (
                noise_tensor.dim() != x.dim() + 1
                or noise_tensor.shape[0] != batch
                or tuple(noise_tensor.shape[2:]) != shape
            ):
                raise ValueError(
                    f"noise must be (S, {', '.join(map(str, shape))}) or (B, S, ...); got {tuple(noise_tensor.shape)}"
                )
            noise_tensor = noise_tensor.transpose(0, 1)
        num = noise_tensor.shape[0]
        perturbed = (x.unsqueeze(0) + noise_tensor).reshape(num * batch, *shape)  # sample-major rows
        new_maps = explainer(explained.model, perturbed, resolved.repeat(num))
        method = getattr(explainer, "method", None)
        if method is not None and tuple(new_maps.shape[1:]) != tuple(maps.shape[1:]):
            new_maps = method.to_map(new_maps)
    new_flat = finite_maps(check_maps(perturbed, new_maps)).view(num, batch, -1).double()
    reference = reference.to(new_flat.device).double()
    if new_flat.shape[2] != reference.shape[1]:
        raise ValueError(
            f"The explainer's maps {tuple(new_maps.shape[1:])} differ from the given maps "
            f"{tuple(maps.shape[1:])}; pass maps made by the same explainer."
        )
    change = (new_flat - reference.unsqueeze(0)).norm(dim=2)  # (S, B)
    if relative:
        own = reference.norm(dim=1).unsqueeze(0).expand_as(change)
        denominator = torch.where(own > 0, own, new_flat.norm(dim=2))
        change = torch.where(denominator > 0, change / denominator.clamp_min(1e-300), 0.0)
    return change.amax(0).float()


class _RandomExplainer:
    """A fresh U[0, 1) map for every perturbation sample (seeded): the chance level of max-sensitivity.

    Rows come sample-major (``S·B``); one map per sample is shared by the ``B`` examples, so an
    example's value does not depend on its batch-mates."""

    def __init__(self, like: torch.Tensor, seed: int) -> None:
        self.batch, self.shape = like.shape[0], tuple(like.shape[1:])
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        samples = inputs.shape[0] // self.batch
        draws = torch.rand((samples, 1, *self.shape), generator=self.generator).to(inputs.device)
        return draws.expand(samples, self.batch, *self.shape).reshape(inputs.shape[0], *self.shape)


class MaxSensitivity(ExplanationMetric):
    """Mean max-sensitivity (Yeh et al. 2019) as a torchmetric; lower is better.

    Args:
        model: the explained model.
        method: the attribution method that made the maps (registry name); ``method_options`` its options.
        radius, samples, relative, seed, output_key, max_batch: see :func:`max_sensitivity`.
    """

    key = "max_sensitivity"
    higher_is_better = False

    explainer: ExplainFunction  # set through __dict__ in __init__ (a method's module is not registered)

    def __init__(
        self,
        model: nn.Module,
        method: str = "saliency",
        method_options: dict[str, Any] | None = None,
        radius: float = 0.02,
        samples: int = 10,
        relative: bool = True,
        seed: int = 0,
        output_key: str | int | None = None,
        max_batch: int | None = 256,
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        if samples < 1:
            raise ValueError(f"samples must be >= 1; got {samples}")
        options = {"max_batch": max_batch, "output_key": output_key, **dict(method_options or {})}
        self.__dict__["explainer"] = as_explainer(method, **options)
        self.options: dict[str, Any] = {
            "radius": radius,
            "samples": samples,
            "relative": relative,
            "seed": seed,
            "output_key": output_key,
            "max_batch": max_batch,
        }

    def values(self, inputs, maps, targets="predicted", masks=None) -> torch.Tensor:
        return max_sensitivity(self.model, inputs, maps, targets, explain=self.explainer, **self.options)

    def random_values(self, inputs, maps, targets, num_maps, seed, masks=None, example_seeds=None) -> torch.Tensor:
        from xai_lightning.evaluation.random_reference import random_maps

        values = []
        for draw, random_map in enumerate(random_maps(maps, num_maps, seed, example_seeds)):
            explainer = _RandomExplainer(maps, seed * 7919 + draw + 1)
            values.append(max_sensitivity(self.model, inputs, random_map, targets, explain=explainer, **self.options))
        return torch.stack(values).mean(0)
