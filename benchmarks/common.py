"""Timing helpers shared by the benchmarks: medians of interleaved repeats, and a printed ratio table.

Every benchmark compares candidates with a reference measured in the same run, so the ratio means
something even on a busy shared machine where absolute times drift.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_times(fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median wall time in seconds of each ``fn()``, after ``warmup`` untimed calls of each.

    The candidates take turns within every repeat, so a change in machine load hits them all alike
    instead of biasing whichever happened to run during it.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def print_ratio_table(title: str, times: dict[str, float], reference: str, target: float | None = None) -> None:
    """Print each candidate's median time and its ratio to ``reference`` (with a pass/fail mark if ``target``)."""
    width = max(len(name) for name in times)
    print(f"\n{title}")
    print(f"  {'candidate'.ljust(width)}  {'median ms':>10}  {'ratio':>7}")
    for name, seconds in times.items():
        ratio = seconds / times[reference]
        mark = ""
        if target is not None and name != reference:
            mark = f"  {'ok' if ratio <= target else 'SLOWER than'} target {target:.2f}x"
        print(f"  {name.ljust(width)}  {seconds * 1e3:10.2f}  {ratio:6.2f}x{mark}")
