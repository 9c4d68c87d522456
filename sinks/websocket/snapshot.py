"""What a client receives on connect: runs and their status, the latest value of every
metric, the firing alerts — bounded, whatever the bus carries.

Sources (runs and nodes) beyond ``max_sources`` evict the one seen least recently, names
beyond ``max_names`` per source the one updated least recently, firing alerts beyond
``max_alerts`` the oldest. Only scalars are kept as latest values (numbers, bools, ``None``
and strings up to :data:`MAX_TEXT` characters): a nested map is a structure, not a reading.

Lives in the server's thread only (no lock): the snapshot a client gets and the messages
that follow it come from one ordered stream, so none is missed or sent twice.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from bus.message import Message
from sinks.websocket.subscription import Subscription

MAX_TEXT: Final = 256
FINISHED: Final = frozenset({"completed", "stopped", "failed", "interrupted"})
#: kinds whose data are readings (latest value kept); events and alerts are state instead
_READINGS: Final = frozenset({"metrics", "episode", "system", "bus"})


class Snapshot:
    """Latest values per topic, run status and firing alerts, each bounded (LRU)."""

    def __init__(
        self,
        max_sources: int = 500,
        max_names: int = 500,
        max_alerts: int = 1000,
        silent_after: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_sources = max_sources
        self.max_names = max_names
        self.max_alerts = max_alerts
        self.silent_after = silent_after
        self.clock = clock
        self.evicted = 0
        # topic -> (run or None, name -> [value, step, ts])
        self.latest: OrderedDict[str, tuple[str | None, OrderedDict[str, list[Any]]]] = OrderedDict()
        # run -> {"status", "node", "step", "first_ts", "last_ts", "error"}
        self.runs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # (topic, rule, metric) -> (run, alert payload)
        self.alerts: OrderedDict[tuple[str, str, str], tuple[str | None, dict[str, Any]]] = OrderedDict()

    def take(self, message: Message, topic: str, payload: dict[str, Any] | None = None) -> None:
        """Fold one message into the state (``payload``: its ``to_dict()``, if already made)."""
        if message.run is not None:
            self._run(message)
        kind = message.kind
        if kind in _READINGS:
            self._readings(message, topic)
        elif kind == "alert":
            self._alert(message, topic, payload if payload is not None else message.to_dict())

    def view(self, subscription: Subscription) -> dict[str, Any]:
        """The snapshot as a client with ``subscription`` may see it."""
        now = self.clock()
        wants = subscription.wants
        runs = {
            run: {**info, "status": self._status(info, now)}
            for run, info in self.runs.items()
            if subscription.run is None or subscription.run.search(run)
        }
        latest = {
            topic: {name: {"value": v[0], "step": v[1], "ts": v[2]} for name, v in names.items()}
            for topic, (run, names) in self.latest.items()
            if wants(topic, run)
        }
        alerts = [payload for (topic, _, _), (run, payload) in self.alerts.items() if wants(topic, run)]
        return {"runs": runs, "latest": latest, "alerts": alerts}

    # -- folding -------------------------------------------------------------------------------

    def _run(self, message: Message) -> None:
        runs = self.runs
        info = runs.get(message.run)  # type: ignore[arg-type]
        if info is None:
            info = runs[message.run] = {  # type: ignore[index]
                "status": "running", "node": message.node, "step": None,
                "first_ts": message.ts, "last_ts": message.ts, "error": "",
            }  # fmt: skip
            self._bound(runs, self.max_sources)
        else:
            runs.move_to_end(message.run)  # type: ignore[arg-type]
        info["last_ts"] = max(info["last_ts"], message.ts)
        info["node"] = message.node
        if message.step is not None and message.kind in ("metrics", "episode"):
            info["step"] = message.step
        if message.kind == "event":
            event = message.data.get("event")
            if event == "run_started":
                info["status"], info["error"] = "running", ""
            elif event == "run_ended":
                status = message.data.get("status")
                info["status"] = status if status in FINISHED else "completed"
                info["error"] = _text(message.data.get("error")) or ""

    def _readings(self, message: Message, topic: str) -> None:
        latest = self.latest
        entry = latest.get(topic)
        if entry is None:
            entry = latest[topic] = (message.run, OrderedDict())
            self._bound(latest, self.max_sources)
        else:
            latest.move_to_end(topic)
        names = entry[1]
        step, ts = message.step, message.ts
        for name, value in message.data.items():
            if isinstance(value, dict | list):
                continue
            if isinstance(value, str):
                value = _text(value)
            if name in names:
                names.move_to_end(name)
                names[name] = [value, step, ts]
            else:
                names[name] = [value, step, ts]
                if len(names) > self.max_names:
                    names.popitem(last=False)
                    self.evicted += 1

    def _alert(self, message: Message, topic: str, payload: dict[str, Any]) -> None:
        data = message.data
        key = (topic, str(data.get("rule", "?")), str(data.get("metric", "")))
        self.alerts.pop(key, None)
        if data.get("state") != "resolved":
            self.alerts[key] = (message.run, payload)
            self._bound(self.alerts, self.max_alerts)

    def _bound(self, mapping: OrderedDict[Any, Any], limit: int) -> None:
        while len(mapping) > limit:
            mapping.popitem(last=False)
            self.evicted += 1

    def _status(self, info: dict[str, Any], now: float) -> str:
        if info["status"] == "running" and now - info["last_ts"] > self.silent_after:
            return "silent"
        return str(info["status"])


def _text(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[: MAX_TEXT - 1] + "…"
    return value
