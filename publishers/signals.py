"""Say that a run ended when the process is told to stop, then let the signal do what it would have.

torchrun's agent and cluster schedulers (Slurm, Kubernetes) stop a training with SIGTERM,
whose default action ends the process at once: no ``finally``, no ``__exit__``, so no
``run_ended`` and the run would only go ``silent``. :class:`OnSignal` runs a callback first
and then hands the signal on unchanged: to the handler that was there before (a callable is
called; an ignored signal stays ignored), or, for the default action, it restores that and
sends the signal again, so the process still dies *by* SIGTERM and its launcher sees the
same exit status as without us.

Python runs a handler in the main thread between two bytecodes, so it may interrupt that
thread anywhere, also inside a ``Publisher`` call holding its lock: :func:`interrupted_inside`
tells the callback so, and it must then not use that publisher (see ``publishers.distributed``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

log = logging.getLogger("metricbus.signals")

Handler = Callable[[int, FrameType | None], None]


class OnSignal:
    """Calls ``callback(signum, frame)`` once on the first of ``signals``, then chains the previous handler.

    Handlers can be set in the main thread only: made elsewhere it installs nothing
    (``installed`` is False). :meth:`restore` puts the previous handlers back, unless
    someone installed their own over ours since.
    """

    def __init__(self, callback: Handler, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
        self._callback = callback
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal() would raise; the handler stays, and runs the callback at most once
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.restore()  # a second SIGTERM while the callback runs gets the previous handling
        try:
            self._callback(signum, frame)
        except Exception as exc:  # the signal must go on whatever happened to the run's end
            log.warning("ending the run on %s failed: %r", signal.Signals(signum).name, exc)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # SIG_DFL (or None: set outside Python): die by it
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def interrupted_inside(frame: FrameType | None, filename: str) -> bool:
    """True if ``frame`` (where a signal handler interrupted the main thread) is within ``filename``'s code."""
    while frame is not None:
        if frame.f_code.co_filename == filename:
            return True
        frame = frame.f_back
    return False
