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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from bus.message import Message

PROTOCOL: Final = 1

_NON_FINITE: Final = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _strict_encoder() -> Callable[[Any], str]:
    """Compact JSON that raises on NaN/±Inf (``allow_nan=False``) instead of writing bare tokens.

    Payloads are almost always finite, so the slow path in :func:`dumps` is the exception. The C
    encoder is made once and called directly (``JSONEncoder.encode`` makes one per call, which
    costs as much as encoding a small map), as ``sinks/jsonl.py`` does.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    iterencode = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)

    def encode(value: Any) -> str:
        return "".join(iterencode(value, 0))

    return encode


_strict = _strict_encoder()


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


def message_json(message: Message) -> bytes:
    """One bus message as UTF-8 JSON: the payload map, as the JSONL sink writes it."""
    return dumps(message.to_dict()).encode()


def messages_frame(texts: Iterable[bytes]) -> bytes:
    """``{"type": "messages", "messages": [...]}`` (UTF-8) from already encoded messages.

    Bytes, not str: a client's frame is a join of shared encoded messages, sent as a text
    frame as it is, so no client pays for encoding a message again.
    """
    return b'{"type":"messages","messages":[' + b",".join(texts) + b"]}"


def dropped_frame(count: int, total: int) -> str:
    """Tells a client that ``count`` of its oldest queued messages were dropped (``total`` so far)."""
    return dumps({"type": "dropped", "count": count, "total": total})


def error_frame(error: str) -> str:
    return dumps({"type": "error", "error": error})


def snapshot_frame(snapshot: Mapping[str, Any]) -> str:
    return dumps({"type": "snapshot", "protocol": PROTOCOL, **snapshot})
