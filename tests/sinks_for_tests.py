"""Misbehaving sinks for the isolation tests, importable as ``sinks_for_tests:Class``.

Each one also records what it received (``pub seq kind`` per line) to a file, so a test can see
what reached it without reaching into its process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from bus.message import Message


class RecordingSink:
    """Appends ``pub seq kind`` per message (``pub missing gap`` per seq gap) to ``record``.

    Its pid goes to ``record`` with suffix ``.pids`` when it starts, so restarts can be seen.
    """

    def __init__(self, record: str) -> None:
        self.record = Path(record)
        with self.record.with_suffix(".pids").open("a") as f:
            f.write(f"{os.getpid()}\n")
        self._file = self.record.open("a")

    def handle(self, batch: Sequence[Message]) -> None:
        self._file.write("".join(self._line(m) for m in batch))
        self._file.flush()

    @staticmethod
    def _line(m: Message) -> str:
        if m.kind == "bus" and m.data.get("event") == "gap":
            # the runner's note of a seq gap: record whose messages, and how many, were lost
            return f"{m.data['of_pub']} {m.data['missing']} gap\n"
        return f"{m.pub} {m.seq} {m.kind}\n"

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RaisingSink(RecordingSink):
    """Raises in every ``handle`` (after recording), as a buggy plugin would."""

    def handle(self, batch: Sequence[Message]) -> None:
        super().handle(batch)
        raise RuntimeError(f"boom on a batch of {len(batch)}")


class DyingSink(RecordingSink):
    """Kills its own process (``os._exit``) on its first message, once: ``marker`` remembers."""

    def __init__(self, record: str, marker: str) -> None:
        super().__init__(record)
        self.marker = Path(marker)

    def handle(self, batch: Sequence[Message]) -> None:
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(3)
        super().handle(batch)


class SlowSink(RecordingSink):
    """Sleeps ``delay`` seconds in every ``handle`` until ``release`` exists, then runs freely."""

    def __init__(self, record: str, release: str, delay: float = 0.2) -> None:
        super().__init__(record)
        self.release = Path(release)
        self.delay = delay

    def handle(self, batch: Sequence[Message]) -> None:
        if not self.release.exists():
            time.sleep(self.delay)  # the misbehaviour under test: a sink that cannot keep up
        super().handle(batch)
