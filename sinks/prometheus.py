"""Prometheus bridge: ``/metrics`` with a gauge for the latest value of every metric.

Each numeric value becomes a gauge sample ``<prefix><kind part><name>{run="…", node="…"}``
holding the latest value seen: ``train/value_loss`` of run ``ppo-1`` on node ``gpu-3`` is
``metricbus_train_value_loss{run="ppo-1",node="gpu-3"}``; an episode's ``reward`` is
``metricbus_episode_reward{…}``; a node's ``cpu/percent`` is
``metricbus_system_cpu_percent{run="",node="gpu-3"}``. Names are sanitised to Prometheus'
rules (``[a-zA-Z_][a-zA-Z0-9_]*``; colons are left to recording rules); two names that
sanitise alike share one series and the later value wins.

Cardinality is bounded, because every series costs Prometheus memory for weeks: at most
``max_runs`` runs (the run seen least recently is dropped, all its series with it) and at most
``max_series`` series in all (the series updated least recently is dropped). Drops are
counted in ``metricbus_sink_evicted_series_total``; ``metricbus_sink_series`` is the current
number. A gauge per run, ``<prefix>step``, holds the latest step.

A metric whose name would sanitise to one of the sink's own families (``<prefix>sink_series``,
``<prefix>sink_evicted_series``…) gets ``_metric`` appended, so an exposition never holds two
``# TYPE`` lines for one name. The memo of sanitised names is bounded too (the names seen
least recently are forgotten, so a flood of names does not push out those in use;
``names_evicted`` counts what it forgot).

prometheus_client is imported in ``__init__`` so a JSONL-only config never imports it.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Final

from bus.bounded import Memo
from bus.message import Message
from sinks._scalars import check_kinds, numeric

_INVALID: Final = re.compile(r"[^a-zA-Z0-9_]")
_KIND_PART: Final = {"metrics": "", "episode": "episode_", "system": "system_", "alert": "alert_", "event": "event_"}

#: Sanitised names memoised, least recently seen out (distinct names come from the wire).
_MAX_NAMES: Final = 10_000
#: The sink's own families, after the prefix (a counter also exposes _total and _created).
_OWN: Final = ("sink_series", "sink_evicted_series", "sink_evicted_series_total", "sink_evicted_series_created")

#: (metric name, run label, node label)
SeriesKey = tuple[str, str, str]


def metric_name(prefix: str, kind: str, key: str) -> str:
    """The Prometheus metric name for ``key`` of a ``kind`` message."""
    name = _INVALID.sub("_", prefix + _KIND_PART.get(kind, kind + "_") + key)
    name = re.sub(r"__+", "_", name)
    name = name if not name[0].isdigit() else "_" + name
    if name.startswith(prefix) and name[len(prefix) :] in _OWN:
        name += "_metric"  # never one of our own families: that would be two # TYPE lines
    return name


class _LatestValues:
    """The latest value per series, bounded by runs and by series (LRU), safe across threads."""

    def __init__(self, max_runs: int, max_series: int) -> None:
        self.max_runs = max_runs
        self.max_series = max_series
        self.evicted = 0
        self.lock = threading.Lock()
        self.series: OrderedDict[SeriesKey, float] = OrderedDict()
        self.runs: OrderedDict[str, set[SeriesKey]] = OrderedDict()

    def update(self, run: str, node: str, values: Sequence[tuple[str, float]]) -> None:
        """Set the latest ``values`` (name, value) of one message; called with the lock held."""
        series, runs = self.series, self.runs
        keys = runs.get(run)
        if keys is None:
            keys = runs[run] = set()
        else:
            runs.move_to_end(run)
        for name, value in values:
            key = (name, run, node)
            if key in series:
                series.move_to_end(key)
            else:
                keys.add(key)
            series[key] = value
        if len(runs) > self.max_runs or len(series) > self.max_series:
            self._evict()

    def _evict(self) -> None:
        series, runs = self.series, self.runs
        while len(runs) > self.max_runs:
            _, dropped = runs.popitem(last=False)
            for old in dropped:
                series.pop(old, None)
            self.evicted += len(dropped)
        while len(series) > self.max_series:
            old, _ = series.popitem(last=False)
            self.evicted += 1
            owner = runs.get(old[1])
            if owner is not None:
                owner.discard(old)
                if not owner:
                    del runs[old[1]]


class PrometheusSink:
    """Serves ``http://host:port/metrics`` with the latest value of every numeric metric."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9109,
        prefix: str = "metricbus_",
        kinds: Sequence[str] = ("metrics", "episode", "system"),
        max_runs: int = 50,
        max_series: int = 20_000,
    ) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if max_runs < 1 or max_series < 1:
            raise ValueError("max_runs and max_series must be at least 1")
        self.prefix = prefix
        self.kinds = check_kinds(kinds, "prometheus")
        self.values = _LatestValues(max_runs, max_series)
        self._gauge = GaugeMetricFamily
        self._counter = CounterMetricFamily
        self._names: Memo[tuple[str, str], str] = Memo(_MAX_NAMES)  # (kind, key) -> sanitised name
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port = int(self._server.server_port)  # the real one when port 0 was asked for

    # -- Sink protocol ----------------------------------------------------------------------

    def handle(self, batch: Sequence[Message]) -> None:
        names = self._names
        step_name = metric_name(self.prefix, "metrics", "step")
        with self.values.lock:
            update = self.values.update
            for message in batch:
                if message.kind not in self.kinds:
                    continue
                kind = message.kind
                values: list[tuple[str, float]] = []
                for key, raw in message.data.items():
                    value = numeric(raw)
                    if value is None:
                        continue
                    name = names.hot.get((kind, key)) or names.get((kind, key))  # see Memo
                    if name is None:
                        name = names.put((kind, key), metric_name(self.prefix, kind, key))
                    values.append((name, value))
                run = message.run if message.run is not None and kind != "system" else ""
                if message.step is not None and run:
                    values.append((step_name, float(message.step)))
                if values:
                    update(run, message.node, values)

    def flush(self) -> None:
        pass  # scrapes read the latest values directly

    def stats(self) -> dict[str, int]:
        """Sizes and evictions of the per-name state (logged by the runner when it stops)."""
        return {
            "series": len(self.values.series),
            "runs": len(self.values.runs),
            "series_evicted": self.values.evicted,
            "names": len(self._names),
            "names_evicted": self._names.evicted,
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    # -- prometheus_client Collector --------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        with self.values.lock:
            snapshot = list(self.values.series.items())
            evicted = self.values.evicted
        families: dict[str, Any] = {}
        for (name, run, node), value in snapshot:
            family = families.get(name)
            if family is None:
                family = families[name] = self._gauge(name, "latest value on the metricbus", labels=["run", "node"])
            family.add_metric([run, node], value)
        yield from families.values()
        yield self._gauge(self.prefix + "sink_series", "series currently exported", value=len(snapshot))
        yield self._counter(
            self.prefix + "sink_evicted_series", "series dropped by the cardinality bounds", value=evicted
        )
