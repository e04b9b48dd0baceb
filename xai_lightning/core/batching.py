"""Memory-capped batching: run big tensor workloads in slices of at most ``max_batch`` rows.

``max_batch=None`` means "no cap of the caller's". On a CPU that is one batch (each method still
cuts CPU passes to a cache-friendly size, see ``ExplainedModel.rows_per_pass``). On CUDA one
uncapped pass of thousands of IG path points or occluded images is an out-of-memory error waiting
to happen, so there :func:`memory_aware_max_batch` derives a cap from the device's free memory and
the model's activation size per row (:func:`activation_bytes_per_row`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = [
    "CUDA_MEMORY_FRACTION",
    "GRAPH_MEMORY_FACTOR",
    "activation_bytes_per_row",
    "batch_slices",
    "even_slices",
    "map_batched",
    "memory_aware_max_batch",
]

#: Share of the device's currently free memory one pass may fill.
CUDA_MEMORY_FRACTION = 0.5
#: Memory of one row in a pass with gradients, in units of its forward activations: the saved
#: activations, the gradients flowing back (as large as the activations they are taken of) and
#: the temporaries of the widest layer.
GRAPH_MEMORY_FACTOR = 3.0


def batch_slices(total: int, max_batch: int | None) -> Iterator[slice]:
    """Slices covering ``range(total)`` with at most ``max_batch`` elements each (all at once if None)."""
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None; got {max_batch}")
    step = total if max_batch is None else max_batch
    for start in range(0, total, max(step, 1)):
        yield slice(start, min(start + step, total))


def even_slices(total: int, cap: int | None) -> Iterator[slice]:
    """Slices covering ``range(total)`` in the fewest passes of at most ``cap`` rows (None: one pass),
    evened out: 256 rows at a cap of 85 are four passes of 64, not three of 85 and one of 1 (sizes
    differ by at most 1; a pass of one row runs a CPU's kernels at their least efficient)."""
    if total == 0:
        return
    count = 1 if cap is None else max(1, -(-total // cap))
    size, larger = divmod(total, count)
    start = 0
    for index in range(count):
        stop = start + size + (1 if index < larger else 0)
        yield slice(start, stop)
        start = stop


def map_batched(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, max_batch: int | None = None) -> torch.Tensor:
    """``fn(*tensors)`` evaluated slice by slice along dim 0 and concatenated.

    All ``tensors`` share their first dimension; ``fn`` must treat rows independently.
    """
    total = tensors[0].shape[0]
    outputs = [fn(*(tensor[rows] for tensor in tensors)) for rows in batch_slices(total, max_batch)]
    return torch.cat(outputs) if outputs else fn(*tensors)


def activation_bytes_per_row(
    model: nn.Module, row: torch.Tensor, forward: Callable[[torch.Tensor], object] | None = None
) -> int:
    """Bytes of every leaf module's output for one input row ``(1, ...)`` (one no-grad forward pass).

    ``forward`` runs the model (default ``model(row)``); outputs that are not tensors are skipped.
    """
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [module for module in model.modules() if next(module.children(), None) is None]
    handles = [module.register_forward_hook(count) for module in leaves]
    try:
        with torch.no_grad():
            (forward or model)(row[:1])
    finally:
        for handle in handles:
            handle.remove()
    return max(total, row[:1].numel() * row.element_size())


def memory_aware_max_batch(
    bytes_per_row: int,
    device: torch.device | str,
    *,
    fraction: float = CUDA_MEMORY_FRACTION,
    graph_factor: float = GRAPH_MEMORY_FACTOR,
    free_memory: Callable[[torch.device], int] | None = None,
) -> int | None:
    """The ``max_batch`` to use when the caller gave None: None (one batch) off CUDA; on CUDA the
    rows whose activations, gradients and temporaries (``graph_factor ×`` the forward activations,
    ``bytes_per_row``) fit in ``fraction`` of the device's free memory, at least 1.

    ``free_memory(device)`` defaults to ``torch.cuda.mem_get_info(device)[0]`` (bytes).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    if free_memory is None:

        def free_memory(where: torch.device) -> int:
            return int(torch.cuda.mem_get_info(where)[0])

    available = fraction * free_memory(device)
    return max(1, int(available // max(1.0, graph_factor * bytes_per_row)))
