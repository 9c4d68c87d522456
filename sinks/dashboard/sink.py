"""The ``dashboard`` sink: a Dash page served from the sink's own process.

The sink runner calls :meth:`DashboardSink.handle` in the main thread, which fills the
store; the web server runs in a background thread started by the constructor, already
listening when the constructor returns, so ``metricbus up`` says "ready" only once the page
can be opened. A third thread reads history from the JSONL root: everything there at
start, and each run or node when it is first seen live (again a moment later, for what the
JSONL sink had not yet written), so a page opened mid-training shows the whole run.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bus.message import Message
from sinks.dashboard.push import install as install_push
from sinks.dashboard.push import push_url
from sinks.dashboard.store import NODE, RUN, Source, Store, history_records

log = logging.getLogger("metricbus.dashboard")

#: After a source is first seen live, its files are read again this much later: the JSONL
#: sink writes on its flush interval, so what was sent just before we subscribed lands late.
CATCH_UP_DELAY: Final = 2.0
_CHUNK: Final = 5000
#: History loads waiting; a flood of new sources past this is not loaded (counted).
_MAX_QUEUE: Final = 10_000


class HistoryLoader:
    """Reads sources' JSONL history into the store on its own thread, in chunks."""

    def __init__(self, store: Store, root: str | None) -> None:
        self.store = store
        self.root = root
        self._queue: list[tuple[float, int, Source]] = []
        self._order = itertools.count()
        self._busy: set[Source] = set()
        self._cond = threading.Condition()
        self._stop = False
        self.loaded = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._loop, name="dashboard-history", daemon=True)
        if root is not None:
            self._thread.start()

    def request(self, source: Source, delay: float = 0.0) -> None:
        if self.root is None:
            return
        with self._cond:
            if len(self._queue) >= _MAX_QUEUE:
                self.refused += 1  # a flood of new names: their history is not worth unbounded memory
                return
            heapq.heappush(self._queue, (time.monotonic() + delay, next(self._order), source))
            self._cond.notify()

    def request_all(self) -> None:
        """Every run and node the root holds now."""
        from sinks.jsonl_files import list_nodes, list_runs

        if self.root is None or not Path(self.root).is_dir():
            return
        for run in list_runs(self.root):
            self.request((RUN, run))
        for node in list_nodes(self.root):
            self.request((NODE, node))

    @property
    def pending(self) -> int:
        """Sources whose immediate load has not finished (delayed catch-ups not counted)."""
        now = time.monotonic()
        with self._cond:
            return len({s for due, _, s in self._queue if due <= now} | set(self._busy))

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._queue or self._queue[0][0] > time.monotonic()):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(timeout)
                if self._stop:
                    return
                _, _, source = heapq.heappop(self._queue)
                self._busy = {source}
            try:
                self._load(source)
            except Exception:  # a bad file must not stop the page: log and go on
                log.exception("dashboard: cannot read the history of %s %s", *source)
            finally:
                with self._cond:
                    self._busy = set()

    def _load(self, source: Source) -> None:
        assert self.root is not None
        started = time.monotonic()
        chunk: list[dict[str, Any]] = []
        taken = 0
        for record in history_records(self.root, source):
            chunk.append(record)
            if len(chunk) >= _CHUNK:
                taken += self.store.add_history(chunk)
                chunk = []
                if self._stop:
                    return
        taken += self.store.add_history(chunk)
        self.loaded += taken
        if taken:
            log.info(
                "dashboard: %d records of %s %s from %s in %.2f s",
                taken, source[0], source[1], self.root, time.monotonic() - started,
            )  # fmt: skip


class DashboardSink:
    """The live Dash dashboard at http://host:port, with history from the JSONL root.

    ``max_points`` bounds each series, ``max_runs``/``max_nodes`` the sources kept and
    ``max_series`` the metrics per source, so memory stays under
    ``(max_runs + max_nodes) × max_series × max_points × 24`` bytes of series. ``push``: the
    ``websocket`` sink whose news makes the page poll at once (``auto``: the config's own). A
    page opens drawing the ``default_runs`` most recent runs (a sweep draws what is asked for).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8050,
        history_root: str | None = "logs",
        max_points: int = 20_000,
        max_runs: int = 50,
        max_nodes: int = 50,
        max_series: int = 500,
        max_alerts: int = 1000,
        poll_interval: float = 1.0,
        draw_points: int = 2000,
        webgl_points: int = 10_000,
        smoothing: float = 0.6,
        silent_after: float = 60.0,
        push: str | None = "auto",
        default_runs: int = 8,
        context: Any = None,
    ) -> None:
        from werkzeug.serving import make_server

        from sinks.dashboard.app import build_app

        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"dashboard: smoothing must be in [0, 1), got {smoothing}")
        if default_runs < 1:
            raise ValueError(f"dashboard: default_runs must be at least 1, got {default_runs}")
        if poll_interval <= 0:
            raise ValueError(f"dashboard: poll_interval must be positive, got {poll_interval}")
        self.store = Store(
            max_points=max_points,
            max_runs=max_runs,
            max_nodes=max_nodes,
            max_series=max_series,
            max_alerts=max_alerts,
            silent_after=silent_after,
        )
        self.loader = HistoryLoader(self.store, history_root)
        stats_interval = 5.0
        config = getattr(context, "config", None)
        if config is not None:
            stats_interval = float(config.broker.stats_interval)
        self.app = build_app(
            self.store,
            poll_interval=poll_interval,
            draw_points=draw_points,
            webgl_points=webgl_points,
            smoothing=smoothing,
            default_runs=default_runs,
            # the broker publishes its counters every stats_interval: silence beyond a few is a cut
            connected_window=max(5.0, 3.0 * stats_interval),
            loading=lambda: self.loader.pending,
        )
        stream = push_url(push, context)  # new points pushed by the websocket sink (sinks/dashboard/push.py)
        if stream is not None:
            install_push(self.app, stream)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per poll is noise
        try:
            self._server = make_server(host, port, self.app.server, threaded=True)
        except OSError as exc:
            self.loader.stop()
            raise RuntimeError(f"dashboard: cannot listen on http://{host}:{port}: {exc}") from exc
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="dashboard-http", daemon=True)
        self._thread.start()
        self.loader.request_all()
        log.info(
            "dashboard: serving %s (history from %s; %s)",
            self.url, history_root, f"pushed from {stream}" if stream else "polling",
        )  # fmt: skip

    def handle(self, batch: Sequence[Message]) -> None:
        for source in self.store.add_live(batch):
            self.loader.request(source)
            self.loader.request(source, CATCH_UP_DELAY)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
        self.loader.stop()
