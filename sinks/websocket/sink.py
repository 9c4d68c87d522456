"""The ``websocket`` sink: every bus message as JSON over WebSocket, to any number of clients.

A browser page, a notebook or a script connects to ``ws://127.0.0.1:8765``, says what it
wants, and gets a snapshot, then the live messages (the README's "Live stream over
WebSocket" has the protocol). The server runs on its own thread
(:mod:`sinks.websocket.server`); :meth:`WebSocketSink.handle` only hands batches over.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from bus.message import Message
from sinks.websocket.access import DEFAULT_ORIGINS, OriginPolicy, required_token
from sinks.websocket.server import StreamServer
from sinks.websocket.snapshot import Snapshot

log = logging.getLogger("metricbus.websocket")


class WebSocketSink:
    """Live JSON stream at ws://host:port: per-client filters, a snapshot on connect, bounded queues.

    ``client_queue`` messages per client at most (the oldest go first, the client is told how
    many); a frame at most every ``frame_interval`` seconds per client (≤ 0.05);
    ``max_sources`` runs/nodes and ``max_names`` metrics per source in the snapshot, least
    recently seen evicted first. Off loopback, ``token_env`` must name an environment
    variable holding the token clients send. ``compress``: per-message deflate (for slow
    links; it costs a compression per client per frame).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        token_env: str | None = None,
        allowed_origins: Sequence[str] = DEFAULT_ORIGINS,
        max_clients: int = 100,
        client_queue: int = 10_000,
        frame_interval: float = 0.005,
        max_sources: int = 500,
        max_names: int = 500,
        max_alerts: int = 1000,
        silent_after: float = 60.0,
        compress: bool = False,
    ) -> None:
        if not 0.0 <= frame_interval <= 0.05:
            raise ValueError(f"websocket: frame_interval must be in [0, 0.05] seconds, got {frame_interval}")
        for name, value in (
            ("max_clients", max_clients), ("client_queue", client_queue), ("max_sources", max_sources),
            ("max_names", max_names), ("max_alerts", max_alerts),
        ):  # fmt: skip
            if value < 1:
                raise ValueError(f"websocket: {name} must be at least 1, got {value}")
        token = required_token(host, token_env)
        self.server = StreamServer(
            host,
            port,
            origins=OriginPolicy(allowed_origins),
            token=token,
            snapshot=Snapshot(max_sources, max_names, max_alerts, silent_after),
            max_clients=max_clients,
            client_queue=client_queue,
            frame_interval=frame_interval,
            compress=compress,
        )
        self.server.start()
        shown = f"[{host}]" if ":" in host else host
        self.url = f"ws://{shown}:{self.server.port}"
        log.info("websocket: serving %s%s", self.url, " (token required)" if token else "")

    def handle(self, batch: Sequence[Message]) -> None:
        self.server.publish(batch)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.server.close()

    def stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks (read from another thread: a moment's view)."""
        s = self.server
        return {
            "clients": s.clients,
            "subscribed": s.subscribed,
            "sent": s.sent,
            "dropped": s.dropped,
            "inbox_dropped": s.inbox_dropped,
            "refused_origin": s.refused_origin,
            "refused_token": s.refused_token,
        }
