"""The ``websocket`` sink: the bus as JSON over WebSocket (needs the ``websocket`` extra)."""

from sinks.websocket.sink import WebSocketSink

__all__ = ["WebSocketSink"]
