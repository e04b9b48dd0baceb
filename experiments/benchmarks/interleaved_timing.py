"""Timing for benchmarks that compare implementations in one process on a shared machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
