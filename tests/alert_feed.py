"""A controlled feed of messages into an in-process alert engine: the alert-rule tests' harness."""

from __future__ import annotations

from typing import Any

from alerts import AlertEngine
from bus.message import Message


class Feed:
    """Builds messages for one run with a controlled clock, and collects the engine's alerts."""

    def __init__(self, rules: list[dict[str, Any]], **options: Any) -> None:
        self.engine = AlertEngine(rules=rules, restore=False, **options)
        self.seq = 0
        self.ts = 1_000_000.0
        self.step = 0

    def send(
        self,
        data: dict[str, Any],
        *,
        run: str | None = "r1",
        kind: str = "metrics",
        node: str = "n1",
        dt: float = 1.0,
        pub: str = "pub-1",
    ) -> list[dict[str, Any]]:
        """Hand one message to the engine; returns the alerts it raised."""
        self.seq += 1
        self.step += 1
        self.ts += dt
        before = len(self.engine.recent)
        self.engine.handle([Message(kind, run, node, pub, self.seq, self.ts, self.step, data)])
        return list(self.engine.recent)[before:]

    def states(self, values: list[Any], metric: str = "x", **kw: Any) -> list[str]:
        """One state letter per value: '.' nothing, 'F' firing, 'R' resolved."""
        out = []
        for v in values:
            alerts = self.send({metric: v}, **kw)
            out.append("".join(a["data"]["state"][0].upper() for a in alerts) or ".")
        return out

    def close(self) -> None:
        self.engine.close()
