"""What the tracker bridges (MLflow, W&B) share: a bounded queue and a worker thread that
delivers to the tracker, retries what fails to get through, and counts what it drops.

Why a thread of its own: a tracker is a network service (or a library that may stall on
one). The sink runner calls ``handle`` on the bus's thread, so anything that waits there
holds up this sink's socket and, through the broker's high-water mark, could in the end
make publishers count drops. ``handle`` only turns messages into items and appends them
(never blocks); the worker drains up to ``max_batch`` items, lets the bridge ``plan`` them
into tracker calls, and runs the calls in order. A call that raises a *transient* error
stays at the head and is retried with exponential back-off, so nothing is sent twice and
nothing overtakes it; a *permanent* error (the tracker said no to that call) is counted in
``rejected`` and skipped. While the tracker is away the queue fills to ``max_buffer`` and
what comes after is counted in ``dropped`` (the earliest data, run starts included, is kept).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from bus.message import Message

log = logging.getLogger("metricbus.tracker")

Item = TypeVar("Item")

#: The only events a tracker keeps: heartbeats and the like say nothing a tracker stores.
LIFECYCLE: Final = frozenset({"run_started", "run_ended"})


def tracked(batch: Sequence[Message], kinds: frozenset[str]) -> Iterator[Message]:
    """The messages of ``batch`` a tracker bridge keeps: its ``kinds``, and of events only a
    run's start and end."""
    for m in batch:
        if m.kind in kinds and (m.kind != "event" or m.data.get("event") in LIFECYCLE):
            yield m


@dataclass
class Call:
    """One request to the tracker; ``size`` is how many items it carries (for the counters)."""

    run: Callable[[], object]
    size: int
    what: str


@dataclass
class TrackerStats:
    queued: int = 0  # items accepted by handle
    delivered: int = 0  # items whose call succeeded
    dropped: int = 0  # items refused because the buffer was full, or left at close
    rejected: int = 0  # items whose call the tracker refused for good
    retries: int = 0  # failed attempts that were retried
    last_error: str = ""


class TrackerQueue(Generic[Item]):
    """Bounded queue + delivery thread. ``plan(items)`` returns the calls for a drained batch.

    ``permanent(exc)`` says whether an error will never go away by retrying (a bad value),
    as opposed to a tracker that is down or slow. The thread starts at once.
    """

    def __init__(
        self,
        name: str,
        plan: Callable[[list[Item]], Sequence[Call]],
        *,
        permanent: Callable[[BaseException], bool] = lambda exc: False,
        max_buffer: int = 20_000,
        max_batch: int = 1_000,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        if max_buffer < 1 or max_batch < 1:
            raise ValueError(f"{name}: max_buffer and max_batch must be >= 1")
        self.name = name
        self.stats = TrackerStats()
        self._plan = plan
        self._permanent = permanent
        self._max_buffer = max_buffer
        self._max_batch = max_batch
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._items: collections.deque[Item] = collections.deque()
        self._in_flight = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._abandon = False
        self._last_report = -1e9
        self._thread = threading.Thread(target=self._loop, name=f"{name}-tracker", daemon=True)
        self._thread.start()

    # -- the bus's side: never waits on the tracker -----------------------------------------------

    def put(self, items: Sequence[Item]) -> None:
        """Queue ``items``; those that do not fit are counted in ``stats.dropped``."""
        if not items:
            return
        with self._wake:
            room = self._max_buffer - len(self._items) - self._in_flight  # in flight counts: the bound is on memory
            taken = items if len(items) <= room else items[: max(room, 0)]
            self._items.extend(taken)
            self.stats.queued += len(taken)
            if len(taken) < len(items):
                self.stats.dropped += len(items) - len(taken)
                self._report("buffer full, dropping", f"{self.stats.dropped} items dropped so far")
            self._wake.notify()

    @property
    def pending(self) -> int:
        """Items queued or being delivered."""
        with self._wake:
            return len(self._items) + self._in_flight

    def close(self, timeout: float) -> None:
        """Deliver what is queued for up to ``timeout`` s, then give up; the rest counts as dropped."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        with self._wake:
            self._abandon = True  # a worker still retrying stops at its next wait
            self._wake.notify()
        self._thread.join(1.0)
        with self._wake:
            left = len(self._items) + self._in_flight
            self._items.clear()
            self._in_flight = 0
            if left:
                self.stats.dropped += left
                log.warning("%s: closed with %d items undelivered (%s)", self.name, left, self.stats.last_error)

    # -- the worker ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._items and not self._stopping:
                    self._wake.wait()
                if not self._items or self._abandon:
                    return
                batch = [self._items.popleft() for _ in range(min(self._max_batch, len(self._items)))]
                self._in_flight = len(batch)
            try:
                calls = list(self._plan(batch))
            except Exception as exc:  # a bug in planning must not kill the thread
                self._fail_for_good(len(batch), f"planning failed: {exc!r}")
                calls = []
            for call in calls:
                if not self._deliver(call):
                    return
            with self._wake:
                self._in_flight = 0

    def _deliver(self, call: Call) -> bool:
        """Run ``call`` until it succeeds or is refused for good; False when told to abandon."""
        delay = self._retry_initial
        while True:
            try:
                call.run()
            except Exception as exc:
                if self._permanent(exc):
                    self._fail_for_good(call.size, f"{call.what} refused: {exc}")
                    return True
                with self._wake:
                    self.stats.retries += 1
                    self.stats.last_error = f"{call.what}: {exc}"[:500]
                    self._report("tracker unreachable, retrying", self.stats.last_error)
                    if self._abandon:
                        return False
                    self._wake.wait_for(lambda: self._abandon, timeout=delay)
                    if self._abandon:
                        return False
                delay = min(delay * 2, self._retry_max)
                continue
            with self._wake:
                self.stats.delivered += call.size
                self._in_flight = max(0, self._in_flight - call.size)
            return True

    def _fail_for_good(self, size: int, text: str) -> None:
        with self._wake:
            self.stats.rejected += size
            self._in_flight = max(0, self._in_flight - size)
            self.stats.last_error = text[:500]
            self._report("rejected", text)

    def _report(self, kind: str, text: str) -> None:
        # called with the lock held; one line per 10 s at most, a flood would bury the cause
        now = time.monotonic()
        if now - self._last_report >= 10.0:
            self._last_report = now
            log.warning("%s: %s: %s", self.name, kind, text)


def flatten(config: Any, prefix: str = "", out: dict[str, str] | None = None, limit: int = 1_000) -> dict[str, str]:
    """A nested config map as ``{"a/b": "value"}`` strings, at most ``limit`` entries."""
    out = {} if out is None else out
    if isinstance(config, dict):
        for key, value in config.items():
            if len(out) >= limit:
                break
            flatten(value, f"{prefix}{key}/", out, limit)
    elif prefix:
        out[prefix[:-1]] = str(config)
    return out
