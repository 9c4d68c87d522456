"""What every long-running metricbus process shares: a stop event set by SIGINT/SIGTERM
(or by the supervisor's death), and a ready file that tells the supervisor it is up."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

PARENT_ENV = "METRICBUS_PARENT_PID"


def stop_on_signals() -> threading.Event:
    """An event set on SIGINT/SIGTERM, or when the supervisor that started us is gone."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    stop_with_parent(stop)
    return stop


def stop_with_parent(stop: threading.Event) -> None:
    """Set ``stop`` when the process named in ``METRICBUS_PARENT_PID`` (our parent) is gone."""
    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit():
        threading.Thread(target=_watch_parent, args=(int(parent), stop), daemon=True, name="parent-watch").start()


def _watch_parent(parent: int, stop: threading.Event) -> None:
    # An orphaned child (supervisor SIGKILLed) would hold ports forever; reparenting tells us.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            stop.set()


def mark_ready(ready_file: str | None) -> None:
    if ready_file:
        Path(ready_file).write_text(str(os.getpid()))
