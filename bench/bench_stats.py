"""Statistics the benchmarks share."""

from __future__ import annotations

import random
import statistics


def bootstrap_ci(ratios: list[float], rounds: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of ``ratios`` (seeded, so a rerun prints the same)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds)]
