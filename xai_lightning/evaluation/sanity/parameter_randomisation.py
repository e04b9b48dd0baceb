"""The model-parameter randomisation test (MPRT; Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

Explain the same images for the same classes with the trained model and with copies whose top
layers (cascading) or single layers (independent) are re-initialised
(:mod:`~xai_lightning.evaluation.sanity.randomisation`), and measure how similar each randomised
map is to the original (:mod:`~xai_lightning.evaluation.sanity.similarity`). A method whose maps
stay similar while the weights that make the prediction are destroyed does not explain the
model. The published finding: gradients, Integrated Gradients and Grad-CAM decorrelate as the
top layers are randomised; Guided Backprop and Guided Grad-CAM stay similar.

Quantus 0.6.0's ``MPRT`` (``layer_order="top_down"`` / ``"independent"``, Spearman of absolute
maps) is the ``spearman_abs`` curve here; with the same seeds (ours ``s + 1`` for its ``s``) and
explanation function the values agree (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchmetrics
from torch import nn

from xai_lightning.core import TargetSpec
from xai_lightning.evaluation.degenerate_map_checks import degenerate_maps
from xai_lightning.evaluation.model_scores import evaluated_model, resolve_metric_targets
from xai_lightning.evaluation.sanity.randomisation import (
    RandomisationMode,
    randomisable_layers,
    randomised_copies,
)
from xai_lightning.evaluation.sanity.similarity import SIMILARITIES, map_similarity
from xai_lightning.evaluation.sensitivity import ExplainFunction, ExplainSpec, as_explainer

__all__ = ["ModelParameterRandomisation", "RandomisationResult", "model_parameter_randomisation"]


@dataclass(frozen=True)
class RandomisationResult:
    """One randomisation test.

    Attributes:
        layers: the randomised layers in order (step k randomised ``layers[:k + 1]`` in cascading mode).
        similarity: similarity name → ``(L, B)`` similarity of each step's map to the original.
        original: ``(B, H, W)`` maps of the trained model.
        maps: ``(L, B, H, W)`` maps of the randomised copies (when ``keep_maps``), else None.
        degenerate: ``(L + 1,)`` how many maps were constant/non-finite: the original's, then each step's.
        targets: ``(B,)`` the explained classes (the trained model's).
        mode: ``"cascading"`` or ``"independent"``.
    """

    layers: list[str]
    similarity: dict[str, torch.Tensor]
    original: torch.Tensor
    maps: torch.Tensor | None
    degenerate: torch.Tensor
    targets: torch.Tensor
    mode: str = "cascading"

    def curve(self, name: str) -> torch.Tensor:
        """``(L,)`` mean similarity over the images at each step."""
        return self.similarity[name].mean(1)

    def mean(self, name: str) -> float:
        """Mean similarity over the whole randomisation curve (and the images)."""
        return float(self.similarity[name].mean())


def _explain_maps(explainer, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    maps = explainer(model, inputs, targets)
    method = getattr(explainer, "method", None)
    if method is not None:
        maps = method.to_map(maps)
    if maps.dim() != 3:
        raise ValueError(f"Randomisation tests compare maps (B, H, W); the explainer returned {tuple(maps.shape)}")
    return maps.detach().float()


def model_parameter_randomisation(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: TargetSpec,
    explain: ExplainSpec,
    *,
    mode: RandomisationMode = "cascading",
    layers: Sequence[str] | None = None,
    similarities: Sequence[str] = tuple(SIMILARITIES),
    seed: int = 0,
    original: torch.Tensor | None = None,
    keep_maps: bool = False,
    output_key: str | int | None = None,
    max_batch: int | None = 256,
) -> RandomisationResult:
    """Run the randomisation test of ``explain`` on ``inputs`` ``(B, C, H, W)``.

    Args:
        targets: the classes to explain (resolved once on the trained model: ``"predicted"`` is
            the trained model's prediction, kept for every randomised copy).
        explain: a method name, an :class:`~xai_lightning.attribution.method.AttributionMethod`, or a
            callable ``(model, inputs, targets) -> maps``; methods' heatmaps (``to_map``) are compared.
        mode: ``"cascading"`` (default) or ``"independent"``.
        layers: layers to randomise, top first (default: every randomisable layer).
        similarities: names from :data:`~xai_lightning.evaluation.sanity.similarity.SIMILARITIES`.
        seed: seed of the re-initialisations.
        original: the trained model's maps if already computed (skips one explanation).
        keep_maps: also return every randomised map (for figures).
    """
    unknown = [name for name in similarities if name not in SIMILARITIES]
    if unknown or not similarities:
        raise ValueError(f"Unknown similarities {unknown}; use some of {list(SIMILARITIES)}.")
    explainer = (
        as_explainer(explain, max_batch=max_batch, output_key=output_key)
        if isinstance(explain, str)
        else as_explainer(explain)
    )
    with evaluated_model(model, output_key, max_batch, like=inputs) as explained:
        x = inputs.detach().clone()
        resolved = resolve_metric_targets(explained, x, targets)
        trained_maps = (
            _explain_maps(explainer, explained.model, x, resolved)
            if original is None
            else original.detach().float().to(x.device)
        )
    names: list[str] = []
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in similarities}
    kept: list[torch.Tensor] = []
    degenerate = [int(degenerate_maps(trained_maps).sum())]
    for layer, randomised in randomised_copies(model, mode, layers, seed):
        with evaluated_model(randomised, output_key, max_batch, like=inputs) as copy_model:
            maps = _explain_maps(explainer, copy_model.model, x, resolved)
        if maps.shape != trained_maps.shape:
            raise ValueError(
                f"Randomised maps {tuple(maps.shape)} differ from the original maps {tuple(trained_maps.shape)}"
            )
        names.append(layer)
        degenerate.append(int(degenerate_maps(maps).sum()))
        for name in similarities:
            scores[name].append(map_similarity(name, trained_maps, maps).cpu())
        if keep_maps:
            kept.append(maps.cpu())
    return RandomisationResult(
        layers=names,
        similarity={name: torch.stack(values) for name, values in scores.items()},
        original=trained_maps.cpu(),
        maps=torch.stack(kept) if keep_maps else None,
        degenerate=torch.tensor(degenerate),
        targets=resolved.cpu(),
        mode=mode,
    )


class ModelParameterRandomisation(torchmetrics.Metric):
    """The randomisation curves accumulated over batches: per similarity and layer, the mean over images.

    ``update(inputs, maps, targets)`` (``maps`` the trained model's, or None to compute them);
    ``compute()`` → ``{similarity: (L,) curve}``; :attr:`layers` names the steps. The states are
    sums over images, summed across DDP ranks.

    Args:
        model: the trained model (never modified: randomisation works on a private copy).
        method: the attribution method (registry name); ``method_options`` its options.
        mode, layers, similarities, seed, output_key, max_batch: see :func:`model_parameter_randomisation`.
    """

    is_differentiable = False
    full_state_update = False
    totals: torch.Tensor
    count: torch.Tensor
    model: nn.Module  # model and explainer are set through __dict__ in __init__: held, not registered
    explainer: ExplainFunction

    def __init__(
        self,
        model: nn.Module,
        method: str = "saliency",
        method_options: dict[str, Any] | None = None,
        mode: RandomisationMode = "cascading",
        layers: Sequence[str] | None = None,
        similarities: Sequence[str] = tuple(SIMILARITIES),
        seed: int = 0,
        output_key: str | int | None = None,
        max_batch: int | None = 256,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.__dict__["model"] = model
        self.layers = list(layers) if layers is not None else randomisable_layers(model)
        self.similarities = list(similarities)
        self.__dict__["explainer"] = as_explainer(
            method, max_batch=max_batch, output_key=output_key, **dict(method_options or {})
        )
        self.options: dict[str, Any] = {
            "mode": mode,
            "layers": self.layers,
            "similarities": self.similarities,
            "seed": seed,
            "output_key": output_key,
            "max_batch": max_batch,
        }
        self.add_state(
            "totals",
            default=torch.zeros(len(self.similarities), len(self.layers), dtype=torch.float64),
            dist_reduce_fx="sum",
        )
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, inputs: torch.Tensor, maps: torch.Tensor | None = None, targets: TargetSpec = "predicted") -> None:
        result = model_parameter_randomisation(
            self.model, inputs, targets, self.explainer, original=maps, **self.options
        )
        sums = torch.stack([result.similarity[name].sum(1) for name in self.similarities])
        self.totals += sums.to(self.totals.device)
        self.count += inputs.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        curves = (self.totals / self.count.clamp_min(1)).float()
        return {name: curves[index] for index, name in enumerate(self.similarities)}
