"""A fixed-memory, mergeable quantile sketch with a relative-error guarantee, for every unit at once.

For probe sets too large to keep even the top ``q·n`` activations of every unit (see
:class:`~xai_lightning.dissection.TopQuantile`), each unit's values are counted in logarithmic
buckets, as in DDSketch (Masson, Rim & Lee, VLDB 2019): with ``γ = (1 + α) / (1 - α)``, a value
``x`` with ``min_value <= |x| <= max_value`` falls in bucket ``i = ⌈log_γ |x|⌉`` (one set of
buckets per sign) and values with ``|x| < min_value`` in one zero bucket. Bucket ``i`` spans
``(γ^(i-1), γ^i]`` and is represented by ``2γ^i / (γ + 1)``, which is within a relative ``α`` of
every value in it. Counts are exact, so the bucket holding any order statistic is known exactly.

**Error bound.** For the top-``q`` threshold ``T = x_(j) + f·(x_(j+1) - x_(j))`` (see
:func:`~xai_lightning.dissection.quantile.quantile_position`) the sketch returns

    |T̂ - T| <= α · max(|x_(j)|, |x_(j+1)|) + min_value

provided ``|x_(j)|, |x_(j+1)| <= max_value`` (larger magnitudes share the last bucket). The
estimate is also clamped to the exact per-unit minimum and maximum, which it tracks.

Memory is ``K × (2 · ⌈log_γ(max_value / min_value)⌉ + 3)`` counts, independent of the number of
values; merging two sketches (another process's, in :meth:`compute`) adds their counts, so the
result does not depend on how the probe set was split. Bucket keys are computed in float32 (a
value within ~1e-7 of a bucket edge may land in the neighbouring bucket, which moves the estimate
by that much relative to the bound) in chunks of :data:`UPDATE_CHUNK` values, so an update's
temporaries stay a few MiB whatever the batch; the counts stay on the activations' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchmetrics import Metric

from xai_lightning.dissection.quantile import float32_ceiling, interpolate_order_statistics, quantile_position

__all__ = ["UPDATE_CHUNK", "QuantileSketch"]

#: Values turned into bucket counts at a time (bounds the temporaries of :meth:`QuantileSketch.update`).
UPDATE_CHUNK = 1 << 18


class QuantileSketch(Metric):
    """Top-``quantile`` thresholds of ``K`` units from logarithmic-bucket counts (torchmetrics style).

    Args:
        num_units: ``K``.
        quantile: ``q`` (0.005 in the paper).
        relative_accuracy: ``α`` of the error bound (default 0.5 %).
        min_value, max_value: magnitudes below ``min_value`` count as zero; the bound holds up to
            ``max_value``.
        sync_on_compute: add the counts of every process in :meth:`compute`.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    counts: torch.Tensor  # (K, num_buckets) long; states registered in __init__
    minimum: torch.Tensor  # (K,)
    maximum: torch.Tensor  # (K,)
    count: torch.Tensor  # () long: values seen per unit

    def __init__(
        self,
        num_units: int,
        quantile: float = 0.005,
        relative_accuracy: float = 0.005,
        min_value: float = 1e-6,
        max_value: float = 1e6,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1); got {quantile}")
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1); got {relative_accuracy}")
        if not 0.0 < min_value < max_value:
            raise ValueError(f"need 0 < min_value < max_value; got {min_value}, {max_value}")
        self.num_units = num_units
        self.quantile = quantile
        self.relative_accuracy = relative_accuracy
        self.min_value = min_value
        self.max_value = max_value
        self.log_gamma, self.lowest_key, self.highest_key = self._keys(relative_accuracy, min_value, max_value)
        self.buckets_per_sign = self.highest_key - self.lowest_key + 1
        size = 2 * self.buckets_per_sign + 1  # negatives (descending magnitude), zero, positives
        self.add_state("counts", default=torch.zeros(num_units, size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("minimum", default=torch.full((num_units,), math.inf), dist_reduce_fx="min")
        self.add_state("maximum", default=torch.full((num_units,), -math.inf), dist_reduce_fx="max")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def _keys(relative_accuracy: float, min_value: float, max_value: float) -> tuple[float, int, int]:
        """``(log γ, lowest key, highest key)`` of the buckets."""
        log_gamma = math.log((1 + relative_accuracy) / (1 - relative_accuracy))
        return log_gamma, math.floor(math.log(min_value) / log_gamma), math.ceil(math.log(max_value) / log_gamma)

    @classmethod
    def memory_bytes(
        cls, num_units: int, relative_accuracy: float = 0.005, min_value: float = 1e-6, max_value: float = 1e6
    ) -> int:
        """Bytes a sketch of these settings holds: its state and torchmetrics' copy of the defaults
        (computed without building one)."""
        _, lowest, highest = cls._keys(relative_accuracy, min_value, max_value)
        counts = num_units * (2 * (highest - lowest + 1) + 1) * 8
        return 2 * (counts + 2 * num_units * 4 + 8)

    @property
    def num_buckets(self) -> int:
        return 2 * self.buckets_per_sign + 1

    def bucket_of(self, values: torch.Tensor) -> torch.Tensor:
        """Bucket index of each value (ascending order of the values they hold)."""
        magnitude = values.abs()
        key = torch.ceil(torch.log(magnitude.float().clamp_min(self.min_value)) * (1.0 / self.log_gamma))
        key = (key.clamp(self.lowest_key, self.highest_key) - self.lowest_key).long()
        zero = self.buckets_per_sign
        index = torch.where(values > 0, zero + 1 + key, zero - 1 - key)
        return torch.where(magnitude < self.min_value, torch.full_like(index, zero), index)

    def bucket_values(self) -> torch.Tensor:
        """``(num_buckets,)`` float64 representative value of each bucket."""
        keys = torch.arange(self.lowest_key, self.highest_key + 1, dtype=torch.float64)
        gamma = math.exp(self.log_gamma)
        representative = 2.0 * torch.exp(keys * self.log_gamma) / (gamma + 1.0)
        return torch.cat([-representative.flip(0), torch.zeros(1, dtype=torch.float64), representative])

    def update(self, activations: torch.Tensor) -> None:
        """Add ``activations (B, K, ...)``."""
        if activations.dim() < 2 or activations.shape[1] != self.num_units:
            raise ValueError(f"Expected activations (B, {self.num_units}, ...); got {tuple(activations.shape)}")
        values = activations.detach().float().transpose(0, 1).reshape(self.num_units, -1)
        if values.shape[1] == 0:
            return
        self.minimum = torch.minimum(self.minimum, values.amin(1))
        self.maximum = torch.maximum(self.maximum, values.amax(1))
        self.count += values.shape[1]
        if self.counts.device != values.device:
            self.to(values.device)
        offsets = torch.arange(self.num_units, device=values.device).view(-1, 1) * self.num_buckets
        counts = self.counts.view(-1)
        for chunk in values.split(max(1, UPDATE_CHUNK // self.num_units), dim=1):
            flat = (self.bucket_of(chunk) + offsets).view(-1)
            counts.index_add_(0, flat, torch.ones_like(flat))

    def merge_processes(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Install the state of every process: ``gather(t)`` returns ``(world, *t.shape)``; counts add up."""
        device = self.counts.device
        self.counts = gather(self.counts).sum(0).to(device)
        self.minimum = gather(self.minimum).amin(0).to(device)
        self.maximum = gather(self.maximum).amax(0).to(device)
        self.count = gather(self.count).sum(0).to(device)

    @property
    def state_bytes(self) -> int:
        """Memory held by the sketch: its state (counts, minima, maxima, count) and the defaults' copy."""
        return 2 * sum(t.numel() * t.element_size() for t in (self.counts, self.minimum, self.maximum, self.count))

    def _order_statistic(self, cumulative: torch.Tensor, rank: int) -> torch.Tensor:
        """Estimate of the ``rank``-th smallest value of every unit, ``(K,)`` float64."""
        target = torch.full((self.num_units, 1), rank, dtype=cumulative.dtype, device=cumulative.device)
        bucket = torch.searchsorted(cumulative, target, right=True).squeeze(1).clamp_max(self.num_buckets - 1)
        estimate = self.bucket_values().to(cumulative.device)[bucket]
        return torch.minimum(torch.maximum(estimate, self.minimum.double()), self.maximum.double())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(thresholds (K,), minima (K,))`` from the counts (of every process when synced)."""
        return self.thresholds()

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`compute` on this process's state, without torchmetrics' syncing and squeezing."""
        n = int(self.count)
        lower, fraction = quantile_position(n, self.quantile)
        cumulative = self.counts.cumsum(1)
        low = self._order_statistic(cumulative, lower)
        high = self._order_statistic(cumulative, min(lower + 1, n - 1))
        thresholds = float32_ceiling(interpolate_order_statistics(low, high, fraction))
        return thresholds, self.minimum.clone()

    def error_bound(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """The guaranteed ``|T̂ - T|`` given the exact order statistics ``x_(j)``, ``x_(j+1)``."""
        return self.relative_accuracy * torch.maximum(lower.abs(), upper.abs()).double() + self.min_value
