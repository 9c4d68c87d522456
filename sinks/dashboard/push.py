"""The dashboard pushed to: new points show as soon as the ``websocket`` sink has news.

The page keeps one way of getting points, its poll (``extendData`` from the chart cursors,
with downsampling, smoothing and x modes in one place); the stream decides *when*.
``assets/push.js`` connects to the websocket sink and, on each frame of messages, runs a
poll at once (one at a time, as the clock's polls are) instead of waiting for the next tick.
While the socket is up the 1 s clock is off, save a keep-alive poll every few seconds for
the header; when the socket is down the clock is on again: polling is the fallback. Sending
the points themselves over the stream would be a second copy of what a chart shows.

``push`` (the sink's option): a ``ws://`` URL, ``None`` for polling only, or ``"auto"``: the
``websocket`` sink of the same config, if it has one that needs no token (a token written
into a page that has no login would be handed to whoever opens it).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

log = logging.getLogger("metricbus.dashboard")

AUTO: Final = "auto"
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", "*", ""})


def push_url(push: str | None, context: Any) -> str | None:
    """The stream the page should connect to (``{host}`` stands for the page's own host)."""
    if push is None or push == "":
        return None
    if push != AUTO:
        if not push.startswith(("ws://", "wss://")):
            raise ValueError(f"dashboard: push must be a ws:// or wss:// URL, 'auto' or null, got {push!r}")
        return push
    config = getattr(context, "config", None)
    for sink in getattr(config, "sinks", {}).values():
        if sink.type == "websocket" or sink.type.endswith(":WebSocketSink"):
            if sink.options.get("token_env"):
                log.info("dashboard: the websocket sink needs a token; the page polls (set push to a URL to override)")
                return None
            host = str(sink.options.get("host", "127.0.0.1"))
            host = "{host}" if host in _WILDCARD_HOSTS else (f"[{host}]" if ":" in host else host)
            return f"ws://{host}:{int(sink.options.get('port', 8765))}"
    return None


def install(app: Any, url: str, keepalive: float = 5.0) -> None:
    """Tell ``assets/push.js`` on every page of ``app`` where the stream is."""
    settings = json.dumps({"url": url, "keepalive_ms": int(keepalive * 1000)}).replace("</", "<\\/")
    app.index_string = app.index_string.replace(
        "{%scripts%}", f"<script>window.metricbusPush = {settings};</script>{{%scripts%}}"
    )
