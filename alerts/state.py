"""The per-series alert state machine, and rebuilding it from the JSONL files after a restart.

Each (rule, source, metric) is a :class:`Series` that moves
``inactive -> pending -> firing -> inactive`` (the last step publishes ``resolved``).
``pending`` is internal: only ``firing`` (first and repeated) and ``resolved`` go out.

Restart: the engine reads the tail of every ``alerts.jsonl`` under the JSONL root and
takes the last record of each series. A series whose last record is ``firing`` comes
back firing, with its ``since`` and last-notified time, so it is neither notified again
(until ``repeat`` is due) nor forgotten: it resolves, and notifies, when its condition
clears. Runs and nodes that wrote anything in the last ``resume_window`` seconds and did
not end are tracked for silence from the restart on, so a run that died while the engine
was down still fires its absence alert.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from alerts.rules import Rule
from bus.message import owner
from sinks.jsonl_files import NODES_DIR, current_files, kind_file, tail_records

log = logging.getLogger("metricbus.alerts")

INACTIVE: Final = "inactive"
PENDING: Final = "pending"
FIRING: Final = "firing"
RESOLVED: Final = "resolved"
#: Bytes read from the end of each file on restart; alerts are rare, this is many of them.
_TAIL_BYTES: Final = 256 * 1024

SeriesKey = tuple[str, str, str | None]  # (rule name, source, metric)


@dataclass(slots=True)
class Series:
    """One rule's view of one metric of one run (or node, or publisher)."""

    rule: Rule
    source: str
    metric: str | None
    run: str | None
    node: str
    memory: Any = None
    phase: str = INACTIVE
    since: float = 0.0
    count: int = 0
    clear_count: int = 0
    clear_since: float = 0.0
    notified: float = 0.0
    value: Any = None
    threshold: float | None = None
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def advance(self, active: bool, ts: float) -> str | None:
        """Feed one verdict at time ``ts``; returns ``firing``/``resolved`` when one goes out."""
        spec = self.rule.spec
        if active:
            self.clear_count = 0
            phase = self.phase
            if phase == FIRING:
                if spec.repeat is not None and ts - self.notified >= spec.repeat:
                    self.notified = ts
                    return FIRING
                return None
            if phase == INACTIVE:
                self.phase, self.since, self.count = PENDING, ts, 1
            else:
                self.count += 1
            if self.count >= spec.for_count and ts - self.since >= spec.for_seconds:
                self.phase, self.notified = FIRING, ts
                return FIRING
            return None
        if self.phase == FIRING:
            # `clear` is hysteresis: a value that dips under the threshold for one sample
            # between two over it would otherwise resolve and fire again each time
            if self.clear_count == 0:
                self.clear_since = ts
            self.clear_count += 1
            if self.clear_count < spec.clear_count or ts - self.clear_since < spec.clear_seconds:
                return None
            self.phase, self.count, self.clear_count = INACTIVE, 0, 0
            return RESOLVED
        self.phase, self.count = INACTIVE, 0
        return None


def _tail_records(path: Path) -> list[dict[str, Any]]:
    return [r for r in tail_records(path, _TAIL_BYTES) if isinstance(r.get("data"), dict)]


def _record_source(record: dict[str, Any]) -> object:
    run, node = record.get("run"), record.get("node")
    if isinstance(node, str):
        return owner("alert", run if isinstance(run, str) and run else None, node)
    return run or None


def restore_alerts(root: Path) -> dict[SeriesKey, dict[str, Any]]:
    """The last alert record of every series found under a JSONL root."""
    last: dict[SeriesKey, dict[str, Any]] = {}
    for path in current_files(root, "alert"):
        for record in _tail_records(path):
            data = record["data"]
            rule = data.get("rule")
            source = data.get("source") or _record_source(record)
            if isinstance(rule, str) and isinstance(source, str):
                key = (rule, source, data.get("metric"))
                if key not in last or record.get("ts", 0) >= last[key].get("ts", 0):
                    last[key] = record
    return last


@dataclass(frozen=True)
class RecentSource:
    name: str
    node: str
    last_ts: float
    ended: str | None  # the status of its run_ended, if that was its last event


def recent_sources(
    root: Path, window: float, now: float | None = None
) -> tuple[list[RecentSource], list[RecentSource]]:
    """(runs, nodes) that wrote under ``root`` within ``window`` seconds, with how they ended."""
    now = time.time() if now is None else now
    runs: list[RecentSource] = []
    nodes: list[RecentSource] = []
    if not root.is_dir():
        return runs, nodes
    for directory in root.iterdir():
        if not directory.is_dir():
            continue
        if directory.name == NODES_DIR:
            for node_dir in directory.iterdir():
                found = _recent(node_dir, "system", window, now)
                if found is not None:
                    nodes.append(RecentSource(node_dir.name, node_dir.name, found[0], None))
            continue
        found = _recent(directory, "event", window, now)
        if found is not None:
            runs.append(RecentSource(directory.name, found[1], found[0], found[2]))
    return runs, nodes


def _recent(directory: Path, kind: str, window: float, now: float) -> tuple[float, str, str | None] | None:
    try:
        mtime = max((p.stat().st_mtime for p in directory.glob("*.jsonl")), default=0.0)
    except OSError:
        return None
    if now - mtime > window:
        return None
    node = directory.name
    for record in reversed(_tail_records(directory / f"{kind_file(kind)}.jsonl")):
        node = str(record.get("node") or node)
        event = record["data"].get("event")
        if event == "heartbeat":
            continue  # Publisher.close() sends one after run_ended
        if event == "run_ended":
            return mtime, node, str(record["data"].get("status"))
        break
    return mtime, node, None
