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
from bus.message import MAX_TS, NAME_PATTERN, owner, valid_key
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
    #: ``rule.check``, bound once: the engine calls it for every value this series sees
    check: Any = None

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


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < MAX_TS


def _scalar(value: object) -> bool:
    return value is None or type(value) in (int, float, bool) or (type(value) is str and len(value) <= 1024)


def _name(value: object) -> bool:
    return type(value) is str and NAME_PATTERN.fullmatch(value) is not None


def valid_alert(record: dict[str, Any]) -> bool:
    """True if an alerts.jsonl record holds what the engine writes: the file is as untrusted as the wire.

    Anyone who could publish could have had the JSONL sink store a forged ``alert``.
    """
    data = record["data"]
    run, node, step, metric = record.get("run"), record.get("node"), record.get("step"), data.get("metric")
    return (
        valid_key(data.get("rule"))
        and _name(data.get("source") or _record_source(record))
        and (run is None or _name(run))
        and _name(node)
        and (metric is None or valid_key(metric))
        and type(data.get("state")) is str
        and _number(record.get("ts"))
        and (data.get("since") is None or _number(data["since"]))
        and (step is None or (type(step) is int and -(2**63) <= step < 2**63))
        and _scalar(data.get("value"))
        and _scalar(data.get("threshold"))
    )


@dataclass
class RestoreStats:
    """What a restore read: records used, and records skipped because they failed validation."""

    records: int = 0
    skipped: int = 0


def restore_alerts(root: Path, stats: RestoreStats | None = None) -> dict[SeriesKey, dict[str, Any]]:
    """The last valid alert record of every series found under a JSONL root (invalid ones counted)."""
    stats = stats if stats is not None else RestoreStats()
    last: dict[SeriesKey, dict[str, Any]] = {}
    for path in current_files(root, "alert"):
        for record in _tail_records(path):
            if not valid_alert(record):
                stats.skipped += 1
                continue
            stats.records += 1
            data = record["data"]
            key = (data["rule"], str(data.get("source") or _record_source(record)), data.get("metric"))
            if key not in last or record["ts"] >= last[key]["ts"]:
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
                if NAME_PATTERN.fullmatch(node_dir.name) is None:
                    continue  # not a directory the JSONL sink made
                found = _recent(node_dir, "system", window, now)
                if found is not None:
                    nodes.append(RecentSource(node_dir.name, node_dir.name, found[0], None))
            continue
        if NAME_PATTERN.fullmatch(directory.name) is None:
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
        if _name(record.get("node")):
            node = record["node"]
        event = record["data"].get("event")
        if event == "heartbeat":
            continue  # Publisher.close() sends one after run_ended
        if event == "run_ended":
            status = record["data"].get("status")
            return mtime, node, status if type(status) is str else None
        break
    return mtime, node, None
