"""Timing shared by the benchmarks, which compare implementations in one process on a shared machine.

CUDA runs asynchronously: a call returns once its kernels are queued, not done. Every timer here
therefore takes a ``device``; on a CUDA device it drains the queue (``torch.cuda.synchronize``)
before the clock starts and before it stops, so a span covers the kernels it launched and none
queued before it. On a CPU the device changes nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch

Device = torch.device | str | None


def synchronize(device: Device) -> None:
    """Wait for every kernel queued on ``device`` when it is a CUDA device; nothing otherwise."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_seconds(
    function: Callable[[], object], device: Device = None, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds (by ``clock``) of one call of ``function``, its CUDA kernels included (see the module)."""
    synchronize(device)
    start = clock()
    function()
    synchronize(device)
    return clock() - start


def peak_memory_mib(function: Callable[[], object], device: Device) -> float:
    """Peak CUDA memory (MiB) one call of ``function`` allocates above what was allocated before it
    (the model and inputs both sides share are not counted; its result is); NaN off CUDA."""
    if device is None or torch.device(device).type != "cuda":
        return float("nan")
    synchronize(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    function()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - resident) / 2**20


def timed_interleaved(
    functions: dict[str, Callable[[], object]], repeats: int, device: Device = None
) -> dict[str, tuple[float, object]]:
    """``{name: (median wall time in s, result)}`` with the runs of all functions interleaved, so that
    load drifting on a shared machine hits all alike (timing one fully, then the next, biases ratios).
    One warm-up call each comes first and provides the result."""
    results = {name: fn() for name, fn in functions.items()}
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            times[name].append(run_seconds(fn, device))
    return {name: (statistics.median(times[name]), results[name]) for name in functions}


def median_seconds(function: Callable[[], object], repeats: int, warm_up: bool = True, device: Device = None) -> float:
    """Median wall time (s) of ``repeats`` calls, after one untimed warm-up call unless ``warm_up=False``."""
    if warm_up:
        function()
    return statistics.median(run_seconds(function, device) for _ in range(repeats))


class Stopwatch(pl.Callback):
    """Wall time of ``trainer.fit``'s training, from ``on_train_start`` to ``on_train_end`` (``elapsed``, s),
    the model's device synchronised at both ends."""

    def on_train_start(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.elapsed = time.perf_counter() - self.start
