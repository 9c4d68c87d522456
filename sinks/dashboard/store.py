"""What the dashboard holds in memory: bounded per-run and per-node series, run status,
alerts and the bus's health, filled from live messages and from the JSONL history.

Memory is bounded by configuration however long training runs: a series keeps at most
``max_points`` points; when it is full its older half is thinned to every other point, so
the recent past stays at full resolution and the whole run stays visible at a coarser one.
Runs and nodes beyond their limit evict the one that has been quiet the longest.

Live messages and history overlap: the JSONL sink may already have written a message the
dashboard also receives live, or the dashboard may have missed messages sent before it
subscribed. Per (source, kind, publisher) the store remembers the highest ``seq`` taken
from files and the first ``seq`` seen live, and takes each message once (a publisher's
``seq`` rises within one file, so this costs two integers per publisher, not a set).
Publisher ids come from the wire, so that memory is bounded too (least recently seen
forgotten first), as is the per-publisher drop count behind the header.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from bus.bounded import Recent
from bus.message import Message
from sinks.dashboard.series import Series
from sinks.jsonl_files import message_of, node_dir, read_records, run_dir

__all__ = ["EPISODE_PREFIX", "NODE", "RUN", "Series", "Source", "SourceData", "Store", "flat_config", "history_records"]

#: Where a series lives: ("run", run id) or ("node", node name).
Source = tuple[str, str]
RUN: Final = "run"
NODE: Final = "node"
#: Episode fields become series named ``episode/<field>``.
EPISODE_PREFIX: Final = "episode/"
SEVERITY_ORDER: Final = {"critical": 0, "error": 1, "warning": 2, "info": 3}
FINISHED: Final = frozenset({"completed", "stopped", "failed", "interrupted"})
#: Publishers whose drop counts are kept, and (kind, publisher) entries remembered per source
#: for de-duplication: least recently seen forgotten first.
MAX_PUBLISHERS: Final = 20_000
MAX_PUBLISHERS_PER_SOURCE: Final = 256
#: A run's config keeps at most this many values, each string at most this long.
MAX_CONFIG_KEYS: Final = 64
MAX_CONFIG_TEXT: Final = 64


@dataclass
class SourceData:
    """One run or node: its series and what the page shows about it."""

    name: str
    colour: int
    series: dict[str, Series] = field(default_factory=dict)
    first_ts: float = math.inf
    last_ts: float = -math.inf
    last_seen: float = 0.0  # receipt time (monotonic) of the last live message
    status: str = "running"
    error: str = ""
    node: str = ""
    episodes: int = 0
    last_step: int = -1
    #: ``run_started``'s config, flattened to bounded scalars (see :func:`flat_config`).
    config: dict[str, str | float] = field(default_factory=dict)
    ignored_series: int = 0

    def touch(self, ts: float) -> None:
        self.first_ts = min(self.first_ts, ts)
        self.last_ts = max(self.last_ts, ts)


@dataclass
class BusHealth:
    """Counters behind the header: rate, age of the last message, drops and gaps."""

    received: int = 0
    last_receipt: float | None = None  # wall clock
    gaps: int = 0
    missing: int = 0
    undecodable: int = 0
    dropped_by_pub: Recent[str, int] = field(default_factory=lambda: Recent(MAX_PUBLISHERS))
    #: drops of publishers no longer in ``dropped_by_pub`` (kept in the total)
    dropped_forgotten: int = 0
    broker: dict[str, Any] = field(default_factory=dict)
    _per_second: collections.deque[tuple[int, int]] = field(default_factory=lambda: collections.deque(maxlen=16))

    def count(self, now: float, n: int) -> None:
        self.received += n
        self.last_receipt = now
        second = int(now)
        if self._per_second and self._per_second[-1][0] == second:
            self._per_second[-1] = (second, self._per_second[-1][1] + n)
        else:
            self._per_second.append((second, n))

    def rate(self, now: float, window: int = 10) -> float:
        # whole seconds only: the current, partial second would read low
        current = int(now)
        total = sum(n for second, n in self._per_second if current - window <= second < current)
        return total / window

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_pub.values()) + self.dropped_forgotten

    def __post_init__(self) -> None:
        self.dropped_by_pub.on_evict = self._forget

    def _forget(self, _pub: str, dropped: int) -> None:
        self.dropped_forgotten += dropped


@dataclass
class AlertBook:
    """Firing alerts by (source, rule, metric) and the resolved ones, newest first."""

    max_history: int
    active: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    history: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)
    fired: collections.Counter[str] = field(default_factory=collections.Counter)
    version: int = 0

    def take(self, message: Message) -> None:
        data = message.data
        source = message.owner
        rule = str(data.get("rule", "?"))
        key = (source, rule, str(data.get("metric", "")))
        entry = {
            "source": source,
            "run": message.run,
            "node": message.node,
            "rule": rule,
            "severity": str(data.get("severity", "warning")),
            "state": str(data.get("state", "firing")),
            "message": str(data.get("message", "")),
            "metric": data.get("metric"),
            "value": data.get("value"),
            "threshold": data.get("threshold"),
            "since": data.get("since"),
            "hint": str(data.get("hint") or ""),
            "detail": str(data.get("detail") or ""),
            "step": message.step,
            "ts": message.ts,
        }
        if entry["state"] == "resolved":
            fired = self.active.pop(key, None)
            entry["fired_ts"] = fired["ts"] if fired else entry["since"]
            entry["fired_message"] = fired["message"] if fired else ""  # what it said when it fired
            self.history.appendleft(entry)
            while len(self.history) > self.max_history:
                self.history.pop()
        else:
            if key not in self.active:
                self.fired[source] += 1
            self.active[key] = entry
        self.version += 1

    def firing(self) -> list[dict[str, Any]]:
        return sorted(self.active.values(), key=lambda a: (SEVERITY_ORDER.get(a["severity"], 9), -a["ts"]))


@dataclass
class _Seen:
    """Per (source, kind, publisher): the highest seq taken from files, the first seen live."""

    file_max: int = -1
    live_min: int | None = None


class Store:
    """Thread-safe: the sink's thread writes, the web server's threads read (under ``lock``)."""

    def __init__(
        self,
        *,
        max_points: int = 20_000,
        max_runs: int = 50,
        max_nodes: int = 50,
        max_series: int = 500,
        max_alerts: int = 1000,
        silent_after: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        Series(max_points)  # validates max_points before anything is taken
        for name, value in (("max_runs", max_runs), ("max_nodes", max_nodes), ("max_series", max_series)):
            if value < 1:
                raise ValueError(f"dashboard: {name} must be at least 1, got {value}")
        self.max_points = max_points
        self.max_runs = max_runs
        self.max_nodes = max_nodes
        self.max_series = max_series
        self.silent_after = silent_after
        self.clock = clock
        self.lock = threading.RLock()
        self.runs: dict[str, SourceData] = {}
        self.nodes: dict[str, SourceData] = {}
        self.alerts = AlertBook(max_alerts)
        self.health = BusHealth()
        #: Bumped when what the page lays out changes: a run, node or series appears or goes.
        self.version = 0
        # per source, then per (kind, publisher): a source's entries go with it in one step
        self._seen: Recent[Source, Recent[tuple[str, str], _Seen]] = Recent(4 * (max_runs + max_nodes))
        self._colours = 0
        self._live_sources: set[Source] = set()

    # -- writing ------------------------------------------------------------------------------

    def add_live(self, batch: Iterable[Message]) -> list[Source]:
        """Take live messages; returns the sources seen live for the first time (to load their history)."""
        new: list[Source] = []
        count = 0
        with self.lock:
            now = self.clock()
            for message in batch:
                count += 1
                if message.kind == "bus":
                    self._bus(message)
                    continue
                source = _source_of(message)
                if source is None:
                    continue
                if source not in self._live_sources:
                    self._live_sources.add(source)
                    new.append(source)
                seen = self._seen_for(source, message)
                if message.seq <= seen.file_max:
                    continue  # already taken from the JSONL history
                if seen.live_min is None:
                    seen.live_min = message.seq
                data = self._take(source, message)
                if data is not None:
                    data.last_seen = now
            self.health.count(now, count)
        return new

    def add_history(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Take records read from JSONL files (any order of kinds); returns how many were new."""
        pending: dict[tuple[Source, str], list[tuple[float, float, float]]] = {}
        taken = 0
        with self.lock:
            for record in records:
                message = message_of(record)
                if message is None or message.kind == "bus":
                    continue
                source = _source_of(message)
                if source is None:
                    continue
                seen = self._seen_for(source, message)
                if message.seq <= seen.file_max or (seen.live_min is not None and message.seq >= seen.live_min):
                    continue  # taken already, or arrives (arrived) live
                seen.file_max = message.seq
                taken += 1
                self._take(source, message, pending)
            for (source, metric), points in pending.items():
                data = self._data(source)
                if data is None:
                    continue
                series = self._series(data, metric)
                if series is not None:
                    arr = np.array(points, dtype=np.float64)
                    series.merge(arr[:, 0], arr[:, 1], arr[:, 2])
            if taken:
                self.version += 1
        return taken

    def _seen_for(self, source: Source, message: Message) -> _Seen:
        by_pub = self._seen.get(source)
        if by_pub is None:
            by_pub = self._seen.put(source, Recent(MAX_PUBLISHERS_PER_SOURCE))
        key = (message.kind, message.pub)
        seen = by_pub.get(key)
        if seen is None:
            seen = by_pub.put(key, _Seen())
        return seen

    def _data(self, source: Source) -> SourceData | None:
        scope, name = source
        table, limit = (self.runs, self.max_runs) if scope == RUN else (self.nodes, self.max_nodes)
        data = table.get(name)
        if data is None:
            if len(table) >= limit:
                victim = min(table.values(), key=lambda d: (d.status == "running", d.last_ts))
                del table[victim.name]
                self._live_sources.discard((scope, victim.name))
                self._seen.pop((scope, victim.name))
            data = table[name] = SourceData(name, self._colours)
            self._colours += 1
            self.version += 1
        return data

    def _series(self, data: SourceData, metric: str) -> Series | None:
        series = data.series.get(metric)
        if series is None:
            if len(data.series) >= self.max_series:
                data.ignored_series += 1
                return None
            series = data.series[metric] = Series(self.max_points)
            self.version += 1
        return series

    def _take(
        self,
        source: Source,
        message: Message,
        pending: dict[tuple[Source, str], list[tuple[float, float, float]]] | None = None,
    ) -> SourceData | None:
        data = self._data(source)
        if data is None:
            return None
        data.touch(message.ts)
        data.node = message.node
        if message.step is not None and message.step > data.last_step:
            data.last_step = message.step
        kind = message.kind
        if kind == "event":
            self._event(data, message)
            return data
        if kind == "alert":
            self.alerts.take(message)
            return data
        if kind == "episode":
            data.episodes += 1
            prefix = EPISODE_PREFIX
            x = float(message.step) if message.step is not None else float(data.episodes)
        else:
            prefix = ""
            x = float(message.step) if message.step is not None else math.nan
        for name, value in message.data.items():
            number = _number(value)
            if number is None:
                continue
            metric = prefix + name
            if pending is not None:
                pending.setdefault((source, metric), []).append((x, message.ts, number))
                continue
            series = self._series(data, metric)
            if series is not None:
                series.append(x, message.ts, number)
        if data.status in ("silent",):
            data.status = "running"
        return data

    def _event(self, data: SourceData, message: Message) -> None:
        event = message.data.get("event")
        before = data.status
        if event == "run_started":
            data.status = "running"
            data.error = ""
            data.config = flat_config(message.data.get("config"))
        elif event == "run_ended":
            status = str(message.data.get("status", "completed"))
            data.status = status if status in FINISHED else "completed"
            # the badge's tooltip and the report's diagnosis: what failed, or why it was stopped
            data.error = str(message.data.get("error") or message.data.get("reason") or "")
        elif event == "heartbeat":
            dropped = message.data.get("dropped")
            if isinstance(dropped, int):
                self.health.dropped_by_pub.put(message.pub, dropped)
        if data.status != before:
            self.version += 1

    def _bus(self, message: Message) -> None:
        data = message.data
        event = data.get("event")
        if event == "gap":
            self.health.gaps += 1
            missing = data.get("missing")
            self.health.missing += missing if isinstance(missing, int) else 0
        elif event == "undecodable":
            total = data.get("total")
            if isinstance(total, int):
                self.health.undecodable = max(self.health.undecodable, total)
        elif event == "broker_stats":
            self.health.broker = dict(data)

    # -- reading (callers hold ``lock`` across related reads) -----------------------------------

    def status(self, data: SourceData) -> str:
        """``running``, ``completed``, ``stopped``, ``failed``, ``interrupted`` or ``silent``."""
        if data.status == "running" and self.clock() - data.last_ts > self.silent_after:
            return "silent"
        return data.status

    def sources(self, scope: str) -> dict[str, SourceData]:
        return self.runs if scope == RUN else self.nodes

    def memory_bytes(self) -> int:
        with self.lock:
            return sum(s.nbytes for table in (self.runs, self.nodes) for d in table.values() for s in d.series.values())

    def bound_bytes(self) -> int:
        """The most the series may take: every limit filled (24 bytes a point)."""
        return (self.max_runs + self.max_nodes) * self.max_series * self.max_points * 24


def flat_config(config: Any) -> dict[str, str | float]:
    """``run_started``'s config as at most ``MAX_CONFIG_KEYS`` scalars: nested keys joined by
    ``.``, SB3's ``hyperparameters`` mapping unwrapped, strings cut at ``MAX_CONFIG_TEXT``."""
    out: dict[str, str | float] = {}

    def walk(prefix: str, value: Any) -> None:
        if len(out) >= MAX_CONFIG_KEYS:
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                unwrap = prefix == "" and key == "hyperparameters"
                walk("" if unwrap else f"{prefix}.{key}" if prefix else str(key), item)
        elif not prefix:
            return
        elif isinstance(value, bool):
            out[prefix] = str(value).lower()
        elif isinstance(value, int | float) and math.isfinite(value):
            out[prefix] = float(value)
        elif isinstance(value, str):
            out[prefix] = value[:MAX_CONFIG_TEXT]

    if isinstance(config, Mapping):
        walk("", config)
    return out


def _source_of(message: Message) -> Source | None:
    # which run or node owns it is the wire format's rule; the dashboard keeps node-scoped
    # system metrics and alerts, not a run-less event or the broker's counters
    if not message.of_node:
        return (RUN, message.owner)
    if message.kind in ("system", "alert"):
        return (NODE, message.node)
    return None


def _number(value: Any) -> float | None:
    if type(value) is float:
        return value
    if type(value) in (int, bool):
        return float(value)
    return None


def history_records(root: str, source: Source) -> Iterator[dict[str, Any]]:
    """Every record the JSONL sink wrote for ``source`` under ``root`` (nothing if none)."""
    scope, name = source
    directory = run_dir(root, name) if scope == RUN else node_dir(root, name)
    if directory.is_dir():
        yield from read_records(directory)
