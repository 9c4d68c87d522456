"""One metric of one run or node in memory: a bounded, time-ordered point buffer.

When full, the older half is thinned to every other point: memory stays bounded however long
training runs, the run's start stays visible at a coarser resolution, and the recent half,
which a reader watches, keeps every point.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]

_FIRST_CAPACITY: Final = 256
#: Publishers of one run on different hosts disagree on the clock by this much; a point this
#: little out of order is appended, not merged (a merge makes readers redraw).
_JITTER: Final = 1.0
#: Out-of-order points held before they are merged in one go.
_MAX_LATE: Final = 256


class Series:
    """One metric of one source: (step, ts, value) in time order, at most ``capacity`` points.

    ``appended`` counts every point ever taken, so a reader that remembers it can ask for
    only what is new (:meth:`since`). ``generation`` changes when older points were merged
    in out of order (history arriving after live points): a reader must then redraw.
    """

    __slots__ = ("_appended", "_generation", "_late", "_n", "_step", "_ts", "_value", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 16:
            raise ValueError(f"max_points must be at least 16, got {capacity}")
        self.capacity = capacity
        size = min(capacity, _FIRST_CAPACITY)
        self._step = np.empty(size)
        self._ts = np.empty(size)
        self._value = np.empty(size)
        self._n = 0
        self._appended = 0
        self._generation = 0
        #: points older than the newest, waiting to be merged in one go (see append)
        self._late: list[tuple[float, float, float]] = []

    @property
    def n(self) -> int:
        if self._late:
            self._merge_late()
        return self._n

    @property
    def appended(self) -> int:
        if self._late:
            self._merge_late()
        return self._appended

    @property
    def generation(self) -> int:
        if self._late:
            self._merge_late()
        return self._generation

    def _merge_late(self) -> None:
        late, self._late = self._late, []
        arr = np.array(late, dtype=np.float64)
        self.merge(arr[:, 0], arr[:, 1], arr[:, 2])

    def append(self, step: float, ts: float, value: float) -> None:
        n = self._n
        if n and ts < self._ts[n - 1] - _JITTER:
            # Out of order: a merge sorts the whole buffer, so points wait and merge together
            # (at the next read, or when _MAX_LATE have come), not one full merge per point.
            self._late.append((step, ts, value))
            if len(self._late) >= _MAX_LATE:
                self._merge_late()
            return
        if n == len(self._ts):
            self._make_room()
            n = self._n
        self._step[n] = step
        self._ts[n] = ts
        self._value[n] = value
        self._n = n + 1
        self._appended += 1

    def merge(self, step: FloatArray, ts: FloatArray, value: FloatArray) -> None:
        """Take points that may be older than those held (history); keeps time order."""
        if not len(ts):
            return
        n = self._n
        older = bool(n) and float(ts.min()) < float(self._ts[n - 1])
        steps = np.concatenate([self._step[:n], step])
        times = np.concatenate([self._ts[:n], ts])
        values = np.concatenate([self._value[:n], value])
        order = np.argsort(times, kind="stable")
        steps, times, values = steps[order], times[order], values[order]
        while len(times) > self.capacity:
            steps, times, values = _thin_older_half(steps, times, values, self.capacity)
        size = max(len(times), min(self.capacity, max(len(self._ts), _FIRST_CAPACITY)))
        self._step = np.empty(size)
        self._ts = np.empty(size)
        self._value = np.empty(size)
        m = len(times)
        self._step[:m], self._ts[:m], self._value[:m] = steps, times, values
        self._n = m
        self._appended += len(ts)
        if older:
            self._generation += 1

    def _make_room(self) -> None:
        size = len(self._ts)
        if size < self.capacity:
            grown = min(self.capacity, size * 2)
            for name in ("_step", "_ts", "_value"):
                old = getattr(self, name)
                new = np.empty(grown)
                new[:size] = old
                setattr(self, name, new)
            return
        steps, times, values = _thin_older_half(self._step, self._ts, self._value, self.capacity)
        m = len(times)
        self._step[:m], self._ts[:m], self._value[:m] = steps, times, values
        self._n = m

    def arrays(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Copies of (step, ts, value) of every point held."""
        if self._late:
            self._merge_late()
        n = self._n
        return self._step[:n].copy(), self._ts[:n].copy(), self._value[:n].copy()

    def since(self, appended: int) -> tuple[FloatArray, FloatArray, FloatArray] | None:
        """Copies of the points taken after the reader's ``appended``; None if not all are held."""
        if self._late:
            self._merge_late()
        new = self._appended - appended
        if new < 0 or new > self._n:
            return None
        n = self._n
        lo = n - new
        return self._step[lo:n].copy(), self._ts[lo:n].copy(), self._value[lo:n].copy()

    def tail(self, count: int) -> FloatArray:
        """A copy of the last ``count`` values."""
        if self._late:
            self._merge_late()
        n = self._n
        return self._value[max(0, n - count) : n].copy()

    def last(self) -> float:
        if self._late:
            self._merge_late()
        return float(self._value[self._n - 1]) if self._n else math.nan

    @property
    def nbytes(self) -> int:
        return int(self._step.nbytes + self._ts.nbytes + self._value.nbytes)


def _thin_older_half(
    steps: FloatArray, times: FloatArray, values: FloatArray, capacity: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    # Keep every other point of the older half: the run's beginning stays visible at half
    # the resolution and the recent half, which a reader watches, keeps every point.
    n = len(times)
    half = max(1, min(n, capacity) // 2)
    keep = np.concatenate([np.arange(0, half, 2), np.arange(half, n)])
    return steps[keep].copy(), times[keep].copy(), values[keep].copy()
