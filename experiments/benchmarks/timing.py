"""Timing shared by the benchmarks, which compare implementations in one process on a shared machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytorch_lightning as pl


def timed_interleaved(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, object]]:
    """``{name: (median wall time in s, result)}`` with the runs of all functions interleaved, so that
    load drifting on a shared machine hits all alike (timing one fully, then the next, biases ratios).
    One warm-up call each comes first and provides the result."""
    results = {name: fn() for name, fn in functions.items()}
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in functions}


def median_seconds(function: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Median wall time (s) of ``repeats`` calls, after one untimed warm-up call unless ``warm_up=False``."""
    if warm_up:
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Stopwatch(pl.Callback):
    """Wall time of ``trainer.fit``'s training, from ``on_train_start`` to ``on_train_end`` (``elapsed``, s)."""

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.elapsed = time.perf_counter() - self.start
