"""The chance level of an explanation metric: its value for random maps on the same images.

A deletion AUC of 0.31 means nothing alone; it means something next to the AUC a random
ranking of the same pixels gets on the same images with the same model. Every metric reports
that reference (REFERENCE.md, "Random-map reference"): the mean of the metric over ``num_maps``
seeded random maps, each i.i.d. uniform on [0, 1) per map entry.

By default one random map is drawn per draw and shared by all examples of the batch, so an
example's reference does not depend on which examples share its batch (``max_batch`` slicing and
DDP sharding leave it unchanged). With ``example_seeds`` (e.g. the probe images' dataset indices)
every example gets its own maps, seeded by ``(seed, example_seed)`` — just as independent of the
batching, and a mean over a probe set is then a mean over that many different random maps.
"""

from __future__ import annotations

import torch

from xai_lightning.core import TargetSpec
from xai_lightning.evaluation.explanation_metric import ExplanationMetric

__all__ = ["RandomMapReference", "random_map_reference", "random_maps"]


def random_maps(
    like: torch.Tensor, num_maps: int, seed: int, example_seeds: torch.Tensor | None = None
) -> torch.Tensor:
    """``(num_maps, *like.shape)`` i.i.d. U[0, 1) maps from private generators seeded with ``seed``
    (and, per example, ``example_seeds`` ``(B,)``)."""
    if num_maps < 1:
        raise ValueError(f"num_maps must be >= 1; got {num_maps}")
    if example_seeds is None:
        generator = torch.Generator().manual_seed(int(seed))
        draws = torch.rand((num_maps, 1, *like.shape[1:]), generator=generator, dtype=torch.float32)
        return draws.to(like.device).expand(num_maps, *like.shape)
    seeds = torch.as_tensor(example_seeds).reshape(-1).tolist()
    if len(seeds) != like.shape[0]:
        raise ValueError(f"example_seeds has {len(seeds)} entries for {like.shape[0]} maps")
    per_example = [
        torch.rand(
            (num_maps, *like.shape[1:]),
            dtype=torch.float32,
            generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(value)),
        )
        for value in seeds
    ]
    return torch.stack(per_example, dim=1).to(like.device)


def random_map_reference(
    metric: ExplanationMetric,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: TargetSpec = "predicted",
    num_maps: int = 3,
    seed: int = 0,
    masks: torch.Tensor | None = None,
    example_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B,)`` the value of ``metric`` for random maps shaped like ``maps`` (mean over ``num_maps``)."""
    return metric.random_values(inputs, maps, targets, num_maps, seed, masks, example_seeds)


class RandomMapReference(ExplanationMetric):
    """The chance level of another metric as a metric: ``update(inputs, maps, targets)`` scores random
    maps shaped like ``maps`` with ``metric`` (its options, its model) and accumulates their mean.

    Example::

        deletion = DeletionAUC(model)
        chance = RandomMapReference(deletion, num_maps=3)
        deletion.update(x, maps, y); chance.update(x, maps, y)
        print(deletion.compute(), "vs random", chance.compute())
    """

    metric: ExplanationMetric  # set through __dict__ in __init__: held, not registered as a submodule

    def __init__(self, metric: ExplanationMetric, num_maps: int = 3, seed: int = 0, **kwargs) -> None:
        super().__init__(metric.model, **kwargs)
        if num_maps < 1:
            raise ValueError(f"num_maps must be >= 1; got {num_maps}")
        self.__dict__["metric"] = metric
        self.key = metric.key
        self.needs_masks = metric.needs_masks
        self.num_maps = num_maps
        self.seed = seed

    def values(
        self,
        inputs: torch.Tensor,
        maps: torch.Tensor,
        targets: TargetSpec = "predicted",
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.metric.random_values(inputs, maps, targets, self.num_maps, self.seed, masks)
