"""Memory-capped batching: run big tensor workloads in slices of at most ``max_batch`` rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

__all__ = ["batch_slices", "map_batched"]


def batch_slices(total: int, max_batch: int | None) -> Iterator[slice]:
    """Slices covering ``range(total)`` with at most ``max_batch`` elements each (all at once if None)."""
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None; got {max_batch}")
    step = total if max_batch is None else max_batch
    for start in range(0, total, max(step, 1)):
        yield slice(start, min(start + step, total))


def map_batched(
    fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, max_batch: int | None = None
) -> torch.Tensor:
    """``fn(*tensors)`` evaluated slice by slice along dim 0 and concatenated.

    All ``tensors`` share their first dimension; ``fn`` must treat rows independently.
    """
    total = tensors[0].shape[0]
    outputs = [fn(*(tensor[rows] for tensor in tensors)) for rows in batch_slices(total, max_batch)]
    return torch.cat(outputs) if outputs else fn(*tensors)
