"""What the WebSocket sink sends: JSON text that a browser's ``JSON.parse`` accepts.

JSON has no NaN or infinities, and Python's ``json`` writes them as bare ``NaN`` and
``Infinity`` tokens that ``JSON.parse`` rejects. Here a non-finite float becomes a string:
``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, which stays distinguishable from ``null`` and
turns back into the number with JavaScript's ``Number(v)`` or Python's ``float(v)``.

A message is encoded once, as the payload map (the same keys as a JSONL line), and each
client's frame joins the encoded texts, so fifty clients do not cost fifty encodings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from bus.message import Message

PROTOCOL: Final = 1

_NON_FINITE: Final = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}

# allow_nan=False makes the fast C encoder raise on a non-finite float instead of writing a
# bare token; payloads are almost always finite, so the slow path below is the exception.
_strict = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE[repr(value)]
    if isinstance(value, Mapping):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Compact JSON of ``value`` with NaN/±Inf as the strings ``"NaN"``/``"Infinity"``/``"-Infinity"``."""
    try:
        return _strict(value)
    except ValueError:  # "Out of range float values are not JSON compliant"
        return _strict(_finite(value))


def message_json(message: Message) -> str:
    """One bus message as JSON: the payload map, as the JSONL sink writes it."""
    return dumps(message.to_dict())


def messages_frame(texts: Iterable[str]) -> str:
    """``{"type": "messages", "messages": [...]}`` from already encoded messages."""
    return '{"type":"messages","messages":[' + ",".join(texts) + "]}"


def dropped_frame(count: int, total: int) -> str:
    """Tells a client that ``count`` of its oldest queued messages were dropped (``total`` so far)."""
    return dumps({"type": "dropped", "count": count, "total": total})


def error_frame(error: str) -> str:
    return dumps({"type": "error", "error": error})


def snapshot_frame(snapshot: Mapping[str, Any]) -> str:
    return dumps({"type": "snapshot", "protocol": PROTOCOL, **snapshot})
