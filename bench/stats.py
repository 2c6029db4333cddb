"""Latency statistics shared by the CPU (``bench.latency``) and GPU (``bench.cuda_latency``) timers."""
from __future__ import annotations

import math
import statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100] of an ascending list."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def summarize(times_ms: list[float], batch: int) -> dict:
    """Median, p90, p99 (nearest rank), mean and min of per-call times in ms, and images per second."""
    ts = sorted(times_ms)
    median = statistics.median(ts)
    return {"median_ms": median, "p90_ms": percentile(ts, 90), "p99_ms": percentile(ts, 99),
            "mean_ms": statistics.fmean(ts), "min_ms": ts[0], "samples": len(ts),
            "images_per_s": batch * 1000.0 / median}


DISTURBED_P90 = 1.5     # a p90 this many times the median: another process shared the CPU


def disturbed(summary: dict) -> bool:
    """Whether a ``summarize`` result looks disturbed (its p90 over ``DISTURBED_P90`` times its median): then
    its median, and any ratio built on it, should be measured again on a quiet machine."""
    return summary["p90_ms"] > DISTURBED_P90 * summary["median_ms"]
