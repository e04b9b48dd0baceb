"""Exact per-unit top-quantile thresholds, streaming, in memory proportional to the quantile.

Network dissection (Bau et al. 2017) thresholds unit ``k`` at ``T_k``, the top ``q = 0.005``
quantile of its activations over every pixel of the probe set: the ``1 - q`` quantile with
linear interpolation between order statistics (NumPy's default), i.e. with ``n`` values sorted
ascending ``x_(0) <= … <= x_(n-1)``, ``r = (1 - q)(n - 1)``, ``j = ⌊r⌋``:

    T_k = x_(j) + (r - j) · (x_(j+1) - x_(j))

Only the ``m = n - j`` largest values decide it, so :class:`TopQuantile` streams the activations
and keeps each unit's ``m`` largest — ``q·n`` values instead of ``n`` (200× less at q = 0.005),
exact, and mergeable across processes (the top ``m`` of a union is the top ``m`` of the parts'
top ``m``). The running ``m``-th largest is a lower bound of the final threshold at every step,
which lets a single pass keep only the pixels that can still end up above it.

When even ``q·n`` values per unit do not fit, :class:`~xai_lightning.dissection.QuantileSketch`
estimates the same threshold in fixed memory with a stated relative error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchmetrics import Metric

__all__ = ["TopQuantile", "float32_ceiling", "quantile_position", "strict_thresholds", "threshold_mask"]


def quantile_position(num_values: int, quantile: float) -> tuple[int, float]:
    """``(j, fraction)`` of the top-``quantile`` threshold among ``num_values`` ascending values.

    The threshold is ``x_(j) + fraction · (x_(j+1) - x_(j))`` — NumPy's ``np.quantile(x, 1 - quantile)``.
    """
    if num_values < 1:
        raise ValueError("The quantile of an empty set is undefined: no activations were seen.")
    position = (1.0 - quantile) * (num_values - 1)
    lower = min(int(math.floor(position)), num_values - 1)
    return lower, position - lower


def interpolate_order_statistics(lower: torch.Tensor, upper: torch.Tensor, fraction: float) -> torch.Tensor:
    """NumPy's linear interpolation ``lower + fraction · (upper - lower)``, in float64, in the same
    two-sided form NumPy uses (so that thresholds agree with ``np.quantile`` to the last bit)."""
    lower, upper = lower.double(), upper.double()
    difference = upper - lower
    if fraction >= 0.5:
        return upper - difference * (1.0 - fraction)
    return lower + difference * fraction


def float32_ceiling(values: torch.Tensor) -> torch.Tensor:
    """The smallest float32 ``>=`` each float64 value, so that for float32 activations ``a``,
    ``a >= float32_ceiling(t)`` exactly when ``a >= t``."""
    rounded = values.float()
    below = rounded.double() < values
    return torch.where(below, torch.nextafter(rounded, torch.full_like(rounded, math.inf)), rounded)


def strict_thresholds(
    thresholds: torch.Tensor, minima: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(K,)`` thresholds ``t'`` in ``dtype`` such that, for activations ``a`` of that dtype, ``a >= t'``
    is network dissection's unit mask: ``a >= T_k``, or ``a > T_k`` (the next representable value
    above ``T_k``) where ``T_k`` equals the unit's minimum.

    The exception keeps the paper's ``S_k(x) >= T_k`` from selecting *every* pixel of a unit that is
    constant over the top quantile (a dead ReLU: more than 99.5 % zeros gives ``T_k = 0``); such a
    unit's mask is then the pixels where it fires at all, possibly none.
    """
    t = thresholds.to(dtype)
    return torch.where(thresholds <= minima, torch.nextafter(t, torch.full_like(t, math.inf)), t)


def threshold_mask(
    values: torch.Tensor, thresholds: torch.Tensor, minima: torch.Tensor, unit_dim: int = 1
) -> torch.Tensor:
    """Network dissection's unit masks: where ``values >= thresholds`` along ``unit_dim`` — strictly
    above where a threshold equals the unit's minimum (see :func:`strict_thresholds`)."""
    shape = [1] * values.dim()
    shape[unit_dim] = -1
    return values >= strict_thresholds(thresholds, minima, values.dtype).view(shape)


class TopQuantile(Metric):
    """Exact top-``quantile`` thresholds of ``K`` units (torchmetrics style: update/compute/reset).

    Args:
        num_units: ``K``.
        num_values: the total number of values every unit will see over all processes
            (probe images × h × w); it fixes how many of the largest values must be kept.
        quantile: ``q`` (0.005 in the paper).
        sync_on_compute: reduce the kept values across processes in :meth:`compute`
            (``torch.distributed``).

    State: ``top (K, m)`` — the ``m`` largest values seen per unit (``-inf`` padded), ``minimum (K,)``,
    ``count`` — values seen per unit. Memory ``K × m`` floats, ``m = ⌈q (n - 1)⌉ + 1``.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    top: torch.Tensor  # states, registered in __init__ (see above)
    minimum: torch.Tensor
    count: torch.Tensor

    def __init__(self, num_units: int, num_values: int, quantile: float = 0.005, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1); got {quantile}")
        if num_values < 1:
            raise ValueError(f"num_values must be >= 1; got {num_values}")
        self.num_units = num_units
        self.num_values = num_values
        self.quantile = quantile
        self.keep = self.values_kept(num_values, quantile)  # the m largest values decide the threshold
        self.add_state("top", default=torch.full((num_units, self.keep), -math.inf), dist_reduce_fx=self._merge_top)
        self.add_state("minimum", default=torch.full((num_units,), math.inf), dist_reduce_fx="min")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def values_kept(num_values: int, quantile: float) -> int:
        """``m``: the largest values per unit that decide the threshold among ``num_values``."""
        return num_values - quantile_position(num_values, quantile)[0]

    @classmethod
    def memory_bytes(cls, num_units: int, num_values: int, quantile: float = 0.005) -> int:
        """Bytes a TopQuantile of these settings holds: its state and torchmetrics' copy of the
        defaults (computed without building one)."""
        return 2 * (num_units * (cls.values_kept(num_values, quantile) + 1) * 4 + 8)

    def _merge_top(self, gathered: torch.Tensor) -> torch.Tensor:
        """``(world, K, m)`` gathered tops → the top ``m`` of their union."""
        union = gathered.permute(1, 0, 2).reshape(self.num_units, -1)
        return union.topk(self.keep, dim=1, sorted=False).values

    def update(self, activations: torch.Tensor) -> None:
        """Add ``activations (B, K, ...)``: every value of unit ``k`` is one sample of its distribution."""
        if activations.dim() < 2 or activations.shape[1] != self.num_units:
            raise ValueError(f"Expected activations (B, {self.num_units}, ...); got {tuple(activations.shape)}")
        values = activations.detach().float().transpose(0, 1).reshape(self.num_units, -1)
        if values.shape[1] == 0:
            return
        self.minimum = torch.minimum(self.minimum, values.amin(1))
        self.count += values.shape[1]
        if self.top.device != values.device:
            self.to(values.device)
        if values.shape[1] > self.keep:
            if values.device.type == "cpu":
                # Only values above the m-th largest seen so far change the top m (one equal to it would
                # only replace an equal value), and no unit has more of them than the most any unit
                # has: a smaller top-k of the batch is enough. (Knowing how many needs the count on
                # the host: worth it on a CPU, a synchronisation per batch on an accelerator.)
                entering = int((values > self.top.amin(1, keepdim=True)).sum(1).max())
                if entering == 0:
                    return
                values = values.topk(min(entering, self.keep), dim=1, sorted=False).values
            else:
                values = values.topk(self.keep, dim=1, sorted=False).values
        self.top = torch.cat([self.top, values], dim=1).topk(self.keep, dim=1, sorted=False).values

    def merge_processes(self, gather: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Install the state of every process: ``gather(t)`` returns ``(world, *t.shape)``."""
        device = self.top.device
        self.top = self._merge_top(gather(self.top).to(device))
        self.minimum = gather(self.minimum).amin(0).to(device)
        self.count = gather(self.count).sum(0).to(device)

    @property
    def state_bytes(self) -> int:
        """Memory held: the kept top values, minima, count, and the defaults' copy."""
        return 2 * sum(t.numel() * t.element_size() for t in (self.top, self.minimum, self.count))

    def lower_bound(self) -> torch.Tensor:
        """``(K,)``: the m-th largest value seen so far (``-inf`` until m values were seen) — never
        above the final threshold, on this process or over all of them."""
        return self.top.amin(1)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(thresholds (K,), minima (K,))`` over everything seen (on every process when synced)."""
        return self.thresholds()

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`compute` on this process's state, without torchmetrics' syncing and squeezing
        (which turns ``(1,)`` into a scalar)."""
        n = int(self.count)
        if n > self.num_values:
            raise ValueError(
                f"TopQuantile was set up for {self.num_values} values per unit but saw {n}: the threshold "
                "would be wrong. Give the true number of probe images."
            )
        lower, fraction = quantile_position(n, self.quantile)
        rank = n - 1 - lower  # index of x_(j) counted from the largest
        ordered = self.top.sort(dim=1, descending=True).values
        low = ordered[:, rank]
        high = ordered[:, max(rank - 1, 0)]
        thresholds = float32_ceiling(interpolate_order_statistics(low, high, fraction))
        return thresholds, self.minimum.clone()
