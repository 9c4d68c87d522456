"""``metricbus replay``: put recorded JSONL records back onto the bus.

Records keep their own run, node, publisher and seq, so sinks see the original stream;
files are merged by timestamp. ``speed`` 0 sends as fast as the socket takes them,
1.0 at the recorded pace, 10 ten times faster.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bus.message import KEYS
from bus.publisher import Publisher
from sinks.jsonl_files import read_file


def _records(path: Path) -> Iterator[tuple[float, int, dict[str, Any]]]:
    for n, record in enumerate(read_file(path)):
        if all(k in record for k in KEYS) and isinstance(record.get("ts"), int | float):
            yield float(record["ts"]), n, record


def merged(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Records of all ``paths`` in timestamp order (each file is already in write order)."""
    streams = [_records(p) for p in paths]
    for _ts, _n, record in heapq.merge(*streams, key=lambda item: item[0]):
        yield record


def replay(paths: Iterable[Path], endpoint: str, speed: float = 0.0, stop: threading.Event | None = None) -> int:
    """Send every record; returns how many were sent."""
    count = 0
    with Publisher(endpoint, heartbeat_interval=1e9) as publisher:
        first_ts: float | None = None
        started = time.monotonic()
        for record in merged(paths):
            if stop is not None and stop.is_set():
                break
            if speed > 0:
                first_ts = record["ts"] if first_ts is None else first_ts
                due = started + (record["ts"] - first_ts) / speed
                delay = due - time.monotonic()
                if delay > 0 and stop is not None and stop.wait(delay):
                    break
                if delay > 0 and stop is None:
                    time.sleep(delay)  # pacing to the recorded clock is the point here
            publisher.forward(record)
            count += 1
    return count
