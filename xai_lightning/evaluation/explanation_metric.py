"""The torchmetrics form shared by every explanation metric: per-example values averaged over a probe set.

Each metric of :mod:`xai_lightning.evaluation` is a function returning one value per example and
a :class:`ExplanationMetric` subclass around it, constructed with the model and the options::

    metric = DeletionAUC(model, steps=32)
    for inputs, maps, targets in batches:
        metric.update(inputs, maps, targets)
    metric.compute()                 # mean over every example seen, on every DDP rank

The states are a float64 sum and a count, both summed across DDP ranks (``dist_reduce_fx="sum"``),
so a probe set split over ranks gives the mean of the whole set.
"""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torch import nn

from xai_lightning.core import TargetSpec

__all__ = ["ExplanationMetric"]


class ExplanationMetric(torchmetrics.Metric):
    """Mean of a per-example explanation score; subclasses implement :meth:`values`.

    The model is held as a plain attribute, not a submodule: the metric must not own it, move it
    with ``.to()`` or put its weights into the metric's ``state_dict``.
    """

    is_differentiable = False
    full_state_update = False
    #: short name used in logged keys, e.g. ``"deletion_auc"`` (a class attribute; a wrapper such as
    #: :class:`~xai_lightning.evaluation.RandomMapReference` sets its wrapped metric's per instance).
    key: str = ""
    #: True when :meth:`update` needs ground-truth masks (localisation metrics).
    needs_masks: bool = False

    model: nn.Module  # set through __dict__ in __init__: held, not registered as a submodule
    total: torch.Tensor  # states, registered in __init__
    count: torch.Tensor

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.__dict__["model"] = model
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def values(
        self,
        inputs: torch.Tensor,
        maps: torch.Tensor,
        targets: TargetSpec = "predicted",
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B,)`` the metric's value for each example; ``masks`` ``(B, H, W)`` only for localisation metrics."""
        raise NotImplementedError

    def random_values(
        self,
        inputs: torch.Tensor,
        maps: torch.Tensor,
        targets: TargetSpec,
        num_maps: int,
        seed: int,
        masks: torch.Tensor | None = None,
        example_seeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B,)`` the value of random maps shaped like ``maps`` on the same examples (mean over ``num_maps``).

        See :func:`~xai_lightning.evaluation.random_reference.random_maps`; metrics whose chance level
        needs more than a random map (max-sensitivity: a random *explainer*) override this.
        """
        from xai_lightning.evaluation.random_reference import random_maps

        draws = random_maps(maps, num_maps, seed, example_seeds)
        return torch.stack([self.values(inputs, draw, targets, masks) for draw in draws]).mean(0)

    def update(
        self,
        inputs: torch.Tensor,
        maps: torch.Tensor,
        targets: TargetSpec = "predicted",
        masks: torch.Tensor | None = None,
    ) -> None:
        values = self.values(inputs, maps, targets, masks)
        self.total += values.detach().to(self.total.device, torch.float64).sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()
