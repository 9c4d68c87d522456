"""Which points of a long series to draw: MinMaxLTTB per pixel bucket (``tsdownsample``).

A chart a few hundred pixels wide cannot show 100k points, and a browser that is sent
them stalls. MinMaxLTTB keeps each bucket's extremes (so a spike or a NaN-free dip is never
averaged away) and the first and last point, which is what a reader checks first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Below this many points a series is drawn whole.
MIN_POINTS_TO_DOWNSAMPLE = 16


def select(values: np.ndarray[Any, np.dtype[np.float64]], n_out: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Indices (sorted, first and last included) of at most ``n_out`` points to draw."""
    n = len(values)
    if n <= max(n_out, MIN_POINTS_TO_DOWNSAMPLE):
        return np.arange(n, dtype=np.int64)
    from tsdownsample import MinMaxLTTBDownsampler

    # The selection is positional (index buckets): points are kept in time order, and x may be
    # a step that repeats after a restart, which the library's x-aware mode would reject.
    finite = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    n_out = max(4, n_out - n_out % 2)
    downsampler = MinMaxLTTBDownsampler()  # type: ignore[no-untyped-call]
    picked = np.asarray(downsampler.downsample(finite, n_out=n_out), dtype=np.int64)
    # A non-finite value is an event worth seeing (a NaN loss): keep every one, bounded.
    bad = np.flatnonzero(~np.isfinite(values))[:n_out]
    if len(bad):
        picked = np.union1d(picked, bad)
    return picked
