"""The probe images on which each unit fires most — the rows of NetDissect's unit reports."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric

__all__ = ["TopActivatingImages"]


class TopActivatingImages(Metric):
    """Per unit, the ``count`` images with the largest peak activation (torchmetrics style).

    The score of an image for unit ``k`` is the maximum of ``A_k`` over its pixels (as in
    NetDissect). Ties go to the smaller image id, so the result does not depend on the order in
    which images arrive or on how they were split across processes.

    State ``best (K, count, 2)`` float64: (score, image id) pairs, ``(-inf, -1)`` where empty.
    ``compute()`` returns ``(scores (K, count) float64, image ids (K, count) long)``, best first.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    best: torch.Tensor  # (K, count, 2) float64 state, registered in __init__

    def __init__(self, num_units: int, count: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        if count < 1:
            raise ValueError(f"count must be >= 1; got {count}")
        self.num_units = num_units
        self.count = count
        empty = torch.stack([torch.full((num_units, count), -math.inf), torch.full((num_units, count), -1.0)], dim=2)
        self.add_state("best", default=empty.double(), dist_reduce_fx=self._merge_gathered)

    def _best_of(self, pairs: torch.Tensor) -> torch.Tensor:
        """``(K, n, 2)`` → the ``count`` best pairs per unit, by score then smaller id."""
        by_id = pairs[..., 1].sort(dim=1, stable=True).indices
        pairs = pairs.gather(1, by_id.unsqueeze(2).expand_as(pairs))
        # Empty slots (id -1) sort first among equal -inf scores but are dropped by count anyway
        # unless fewer images exist; they keep score -inf.
        order = pairs[..., 0].sort(dim=1, descending=True, stable=True).indices[:, : self.count]
        return pairs.gather(1, order.unsqueeze(2).expand(-1, -1, 2))

    def _merge_gathered(self, gathered: torch.Tensor) -> torch.Tensor:
        return self._best_of(gathered.permute(1, 0, 2, 3).reshape(self.num_units, -1, 2))

    def update(self, activations: torch.Tensor, image_ids: torch.Tensor) -> None:
        """``activations (B, K, h, w)``, ``image_ids (B,)`` (probe positions)."""
        if activations.shape[0] == 0:
            return
        scores = activations.detach().flatten(2).amax(2).double().transpose(0, 1)  # (K, B)
        ids = image_ids.to(scores.device).double().view(1, -1).expand_as(scores)
        fresh = torch.stack([scores, ids], dim=2)
        self.best = self._best_of(torch.cat([self.best, fresh], dim=1))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ranked()

    def ranked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`compute` on this process's state, without torchmetrics' syncing and squeezing."""
        return self.best[..., 0].clone(), self.best[..., 1].long()
