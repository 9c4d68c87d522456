"""The alert a file-writing sink raises when it cannot write (disk full, quota, I/O error).

A sink that keeps its lines and retries is only half the answer: somebody has to be told
that the disk is full before the backlog bound is reached. :class:`WriteAlarm` logs once
and publishes one ``alert`` message (``firing``) onto the bus when writes start failing,
and one ``resolved`` when they succeed again, so the alerts engine, the dashboard and the
JSONL files of other nodes all see it. It never raises: the sink must keep running.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bus.publisher import Publisher
    from bus.subscriber import SinkContext

log = logging.getLogger("metricbus.jsonl")

RULE = "jsonl_write_failed"


class WriteAlarm:
    """Firing/resolved state of "this sink cannot write", published with ``context``'s keys."""

    def __init__(self, context: SinkContext | None, sink: str = "jsonl") -> None:
        self.context = context
        self.sink = context.name if context is not None else sink
        self.firing = False
        self.failures = 0
        self._since = 0.0
        self._publisher: Publisher | None = None

    def failed(self, path: str, reason: str, pending_lines: int, dropped_lines: int) -> None:
        """A write failed; the first failure of a streak logs and fires, the rest only count."""
        self.failures += 1
        if self.firing:
            return
        self.firing = True
        self._since = time.time()
        text = f"sink {self.sink} cannot write {path} ({reason}); keeping {pending_lines} lines in memory and retrying"
        log.error("%s", text)
        self._publish("firing", "critical", text, path, pending_lines, dropped_lines)

    def recovered(self, path: str, dropped_lines: int) -> None:
        """A write succeeded; resolves a firing alarm."""
        if not self.firing:
            return
        self.firing = False
        text = f"sink {self.sink} writes again to {path} after {self.failures} failed tries"
        if dropped_lines:
            text += f"; {dropped_lines} lines were dropped past the memory bound"
        log.warning("%s", text)
        self._publish("resolved", "info", text, path, 0, dropped_lines)
        self.failures = 0

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    def _publish(self, state: str, severity: str, text: str, path: str, pending: int, dropped: int) -> None:
        if self.context is None:
            return
        data: dict[str, Any] = {
            "rule": RULE,
            "severity": severity,
            "state": state,
            "message": text,
            "metric": "jsonl/pending_lines",
            "value": pending,
            "threshold": 0,
            "since": self._since,
            "sink": self.sink,
            "path": path,
            "dropped_lines": dropped,
        }
        try:
            if self._publisher is None:
                from bus.publisher import Publisher

                ctx = self.context
                # A node alert (run None): it is about this machine's disk, not one run.
                self._publisher = Publisher(
                    ctx.frontend, None, ctx.node, curve=ctx.curve, heartbeat_interval=3600.0, connect_timeout=1.0
                )
            self._publisher.alert(data)
        except Exception as exc:  # the bus being unreachable must not stop the sink writing
            log.warning("sink %s: could not publish the %s alert: %s", self.sink, state, exc)
