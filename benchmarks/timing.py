"""Timing helpers of ``make bench``: medians of repeated, interleaved measurements."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))


def median_time(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(
    a: Callable[[], float], b: Callable[[], float], repeats: int
) -> tuple[float, float]:
    """Medians of ``a()`` and ``b()`` run alternately (each returns its own measurement)."""
    first, second = [], []
    for _ in range(repeats):
        first.append(a())
        second.append(b())
    return statistics.median(first), statistics.median(second)
